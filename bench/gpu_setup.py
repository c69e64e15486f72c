"""The GPU check's setup, before anything is measured: the requirements (installed on a GPU machine, checked in a
dry run), and the data inside the repository. Standard library only: this runs in the check's parent process,
which never imports torch (it would hold GPU memory while the children measure)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements.txt"
GPU_REQUIREMENTS = REPO / "requirements-gpu.txt"
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
NEEDS_TORCH_TO_BUILD = {"flash-attn"}  # their setup imports torch: no build isolation


def requirement_lines(path: Path) -> list[str]:
    """The requirements of a file, without comments, options and -r includes."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def distribution(requirement: str) -> str:
    return NAME.match(requirement).group(1).split("[")[0]


def check_installed(requirement: str) -> tuple[bool, str]:
    """Is `requirement` met by what this interpreter has? (met, what was found)."""
    name = distribution(requirement)
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        return False, "not installed"
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no packaging: the installed version is all we can say
        return True, version
    wanted = Requirement(requirement).specifier
    met = wanted.contains(version, prereleases=True) or wanted.contains(version.split("+")[0], prereleases=True)
    return met, version if met else f"{version} installed, {requirement} wanted"


OFFLINE = re.compile(r"NewConnectionError|Network is unreachable|name resolution|ConnectTimeout|Max retries exceeded")
NO_INDEX = "no package index reachable: "


def _pip(args: list[str], timeout: float) -> tuple[bool, str]:
    """pip install, in a process group of its own: a source build it starts (flash-attn compiles for an hour where
    no prebuilt wheel fits) is stopped with it at the time limit, not left compiling while the check measures."""
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--retries", "1",
               "--timeout", "20", *args]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                   start_new_session=True)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return False, f"pip gave up after {timeout:.0f} s"
        log.seek(0)
        lines = [line for line in log.read().splitlines() if line.strip()]
    if code == 0:
        return True, ""
    errors = [line for line in lines if line.startswith("ERROR")] or lines[-1:]
    why = (errors[0] if errors else f"pip exited {code}")[:200]
    return False, (NO_INDEX + why if any(OFFLINE.search(line) for line in lines) else why)


def install(timeout_all: float = 900, timeout_each: float = 240) -> list[dict]:
    """pip install requirements.txt (at once; one by one when that fails) and each line of requirements-gpu.txt
    on its own. Returns one entry per requirement: what is there now, and why not where it failed."""
    base, gpu = requirement_lines(REQUIREMENTS), requirement_lines(GPU_REQUIREMENTS)
    # what is met already is left alone: no index asked (an offline machine would wait on each)
    base_unmet = [req for req in base if not check_installed(req)[0]]
    whole, problem = _pip(["-r", str(REQUIREMENTS)], timeout_all) if base_unmet else (True, "")
    failures = {} if whole else {req: problem for req in base_unmet}
    if not whole and problem.startswith(NO_INDEX):  # no index reachable: one by one would wait as long again, each
        return [_entry(req, req in gpu, failures.get(req, problem if req in gpu else None)) for req in base + gpu]
    if not whole:
        for requirement in base_unmet:
            ok, why = _pip([requirement], timeout_each)
            if ok:
                failures.pop(requirement)
            else:
                failures[requirement] = why
    for requirement in [req for req in gpu if not check_installed(req)[0]]:
        isolation = ["--no-build-isolation"] if distribution(requirement) in NEEDS_TORCH_TO_BUILD else []
        ok, why = _pip([*isolation, requirement], timeout_each)
        if not ok:
            failures[requirement] = why
    return [_entry(req, req in gpu, failures.get(req)) for req in base + gpu]


def check(gpu_machine: bool) -> list[dict]:
    """The dry run's check of the requirements: met here or not. GPU-only ones are not expected on a CPU."""
    return [_entry(req, req in requirement_lines(GPU_REQUIREMENTS), None, expect=gpu_machine or req not in
                   requirement_lines(GPU_REQUIREMENTS))
            for req in requirement_lines(REQUIREMENTS) + requirement_lines(GPU_REQUIREMENTS)]


def _entry(requirement: str, gpu_only: bool, install_error: str | None, expect: bool = True) -> dict:
    met, found = check_installed(requirement)
    if met:
        status = "ok"
    elif not expect:
        status = "GPU only: not installed here"
    else:
        status = "missing"
    return {"requirement": requirement, "gpu_only": gpu_only, "status": status, "found": found,
            "install_error": install_error}


def data_problems(paths: list[Path]) -> list[str]:
    """Each training file must exist and lie inside the repository."""
    problems = []
    for path in paths:
        resolved = path.resolve()
        if REPO not in resolved.parents:
            problems.append(f"{path} is outside the repository")
        elif not resolved.is_file():
            problems.append(f"{path} is missing")
    return problems
