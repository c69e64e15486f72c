"""Start the real web app (`python app.py`) in a subprocess for tests, and stop it afterwards.

Shared by the API and browser tests (`with app_server(tmp_path) as server: ... server.url`) and by
bench/app_figures.py (`launch` + `stop`, to time the start itself).
Each server gets its own data root, Gradio cache and port, and no GPU.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


@dataclass
class AppServer:
    url: str
    home: Path  # PHI3LORA_HOME: runs/ and uploads/
    gradio_cache: Path  # GRADIO_TEMP_DIR: where uploads land before the app takes them
    log: Path
    process: subprocess.Popen

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path: Path, script: str | Path = "app.py", cwd: Path | None = None, **env: str) -> AppServer:
    """Start `python SCRIPT` (from the repository root) on a free port and return at once, without waiting
    for it to answer (the benchmarks time that). Extra keyword arguments become environment variables.
    With `cwd`, the app runs in that folder instead, and without a PHI3LORA_HOME in `env` it keeps its data in
    its default data root, cwd/phi3lora_home (as a Space without a storage bucket does)."""
    port = free_port()
    default_root = cwd is not None and "PHI3LORA_HOME" not in env
    # tests may pass a prepared data root
    home = Path(cwd) / "phi3lora_home" if default_root else Path(env.get("PHI3LORA_HOME") or tmp_path / "home")
    cache, log = tmp_path / "gradio-cache", tmp_path / "app.log"
    cache.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
        "PHI3LORA_HOME": str(home), "GRADIO_TEMP_DIR": str(cache), "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **env,
    }
    if default_root:
        del environment["PHI3LORA_HOME"]
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, str(script if cwd is None else REPO / script)], cwd=cwd or REPO,
                                   env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return AppServer(f"http://127.0.0.1:{port}", home, cache, log, process)


def stop(server: AppServer) -> None:
    """Stop the server and any training run it started."""
    _stop(server.process)
    _stop_runs(server.home)


@contextmanager
def app_server(tmp_path: Path, startup_timeout: float = 120, cwd: Path | None = None, **env: str):
    """Run app.py until the block ends (in `cwd` if given: see `launch`). Extra keyword arguments become
    environment variables."""
    server = launch(tmp_path, cwd=cwd, **env)
    try:
        _wait_until_up(server, startup_timeout)
        yield server
    finally:
        stop(server)


def _wait_until_up(server: AppServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"app.py exited with {server.process.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(server.url + "/gradio_api/info", timeout=2).status_code in (200, 401):  # 401: up, behind a login
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"app.py did not answer within {timeout:.0f}s:\n{server.log_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_runs(home: Path) -> None:
    """Training runs outlive the app by design; a test's runs must not outlive the test. Each supervisor and
    trainer leads its own process group (runs/lifecycle.py starts them in new sessions), so killing the group is exact."""
    from phi3lora.tasks import processes, records  # light: no torch

    for attempt in (home / "runs").glob("*/attempts/*"):
        launch = records.read_record(attempt / "launch.json")
        for identity in ((launch or {}).get("body"), records.read_record(attempt / "supervisor.json")):
            if identity and processes.is_alive(identity):
                try:
                    os.killpg(identity["pid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def wait_for_run(client, run_id: str, timeout: float) -> dict:
    """The run's /run_status once it is no longer queued or running (or the timeout has passed)."""
    deadline = time.monotonic() + timeout
    while True:
        info = client.predict(run_id, api_name="/run_status")
        if info["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return info
        time.sleep(1)


def page_event(config: dict, is_trigger, data: list) -> int:
    """The fn_index of the page event (Gradio's /config "dependencies") that the browser would run: one whose
    trigger satisfies is_trigger(component, event_name). A component may have several listeners (the Train tab's
    base model feeds both the defaults and the memory estimate): then the one taking len(data) inputs."""
    components = {c["id"]: c for c in config["components"]}
    found = [i for i, d in enumerate(config["dependencies"])
             if any(is_trigger(components.get(target, {}), event) for target, event in d["targets"])]
    if len(found) > 1:
        found = [i for i in found if len(config["dependencies"][i]["inputs"]) == len(data)]
    assert len(found) == 1, f"{len(found)} page events match {data!r}"
    return found[0]
