"""Deploy the app as a Hugging Face Space.

    python -m phi3lora space build OUT [--force]
        writes a ready-to-push Space folder: README.md (the Space card, space_config/card.md with sdk_version
        filled in from the installed gradio), app.py, requirements.txt, the phi3lora package with its demo model,
        and any other file in space_config/ (e.g. packages.txt).

    python -m phi3lora space push --repo OWNER/NAME [--private] [--hardware l4x1]
                                  [--storage-bucket OWNER/BUCKET [--mount-path /data]]
                                  [--variable KEY=VALUE ...] [--secret KEY ...] [--token-env VAR]
        builds into a temporary folder, creates the Space (or reuses it), mounts the bucket and points
        PHI3LORA_HOME at it, sets the variables and secrets, requests the hardware, and uploads the folder
        (files the build no longer has are deleted from the Space).

What goes into a Space is an allow-list (INCLUDE), never "everything but": no run data, virtual environments,
caches, tests or git folders can slip in, and a build refuses any file that holds something like a Hugging Face
token. The push token is read from $HF_TOKEN (or --token-env VAR, or the saved `hf auth login`) and is never
printed, stored in the Space, or uploaded.

This module builds; deploy/space_hub.py pushes (huggingface_hub is imported there only, when pushing) and holds the
`space` command.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..errors import UserError

SOURCE_ROOT = Path(__file__).resolve().parents[2]
CARD = Path("space_config") / "card.md"
# Everything a Space gets from the source tree, as globs relative to it (plus space_config/'s other files).
INCLUDE = ("app.py", "requirements.txt", "phi3lora/**/*.py", "phi3lora/demo_model/*", "phi3lora/samples/*")
REQUIRED = ("app.py", "requirements.txt", "phi3lora/__init__.py")
CARD_KEYS = ("title", "sdk", "sdk_version", "python_version", "app_file", "suggested_hardware", "hf_oauth",
             "startup_duration_timeout", "models", "license", "short_description")
TOKEN = re.compile(rb"hf_[A-Za-z0-9]{30,}")  # a user or org access token


class SpaceError(UserError, ValueError):
    """The Space cannot be built or pushed as asked (a bad name, a missing token, the Hub refused, ...)."""


@dataclass
class Build:
    folder: Path
    files: list[str]  # paths relative to `folder`, sorted
    total_bytes: int
    sdk_version: str



# --- build ---------------------------------------------------------------------------------------------------

def build_space(out: str | Path, source_root: str | Path = SOURCE_ROOT, force: bool = False) -> Build:
    """Write the Space folder for the source tree at `source_root` into `out` (new or empty; with `force`, emptied
    first) and return what was written."""
    root, out = Path(source_root).resolve(), Path(out).resolve()
    sources = space_files(root)
    refuse_tokens(sources)
    check_requirements((root / "requirements.txt").read_text())
    version = gradio_version(root)
    card = render_card((root / CARD).read_text(), version)
    prepare_output(out, root, force)
    for relative, source in sources.items():
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (out / "README.md").write_text(card)
    files = sorted([*sources, "README.md"])
    return Build(out, files, sum((out / name).stat().st_size for name in files), version)


def space_files(root: Path) -> dict[str, Path]:
    """{path in the Space: source file}: the allow-list applied to `root`, without caches or hidden files."""
    files: dict[str, Path] = {}
    for pattern in INCLUDE:
        for path in root.glob(pattern):
            relative = path.relative_to(root)
            if path.is_file() and not _junk(relative):
                files[relative.as_posix()] = path
    for path in (root / CARD.parent).glob("*"):  # space_config extras go to the Space's root
        if path.is_file() and path.name != CARD.name and not _junk(Path(path.name)):
            files[path.name] = path
    missing = [name for name in (*REQUIRED, CARD.as_posix()) if not (root / name).is_file()]
    if missing:
        raise SpaceError(f"{root} is not a phi3lora source tree: {', '.join(missing)} missing")
    return dict(sorted(files.items()))


def _junk(relative: Path) -> bool:
    return any(part == "__pycache__" or part.startswith(".") for part in relative.parts) \
        or relative.suffix in (".pyc", ".pyo")


def refuse_tokens(files: dict[str, Path]) -> None:
    for relative, path in files.items():
        if TOKEN.search(path.read_bytes()):
            raise SpaceError(f"refusing to build: {relative} holds what looks like a Hugging Face token (hf_...); "
                             "remove it (tokens belong in Space secrets)")


def check_requirements(text: str) -> None:
    """A GPU Space installs requirements.txt as it is: a CPU-only torch pin or index would leave it without CUDA."""
    for line in text.splitlines():
        if "+cpu" in line or "/whl/cpu" in line:
            raise SpaceError(f"requirements.txt asks for a CPU-only build ({line.strip()}): a GPU Space needs the "
                             "plain PyPI pin (on Linux it is the CUDA build)")


def gradio_version(root: Path) -> str:
    """The Space's sdk_version: the gradio installed here (the one the tests ran), which must satisfy
    requirements.txt's gradio range."""
    from packaging.requirements import Requirement

    try:
        version = metadata.version("gradio")
    except metadata.PackageNotFoundError:
        raise SpaceError("gradio is not installed here: the Space's sdk_version is the installed gradio's "
                         "(pip install -r requirements.txt)") from None
    for line in (root / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and Requirement(line).name.lower() == "gradio":
            if version not in Requirement(line).specifier:
                raise SpaceError(f"the installed gradio {version} is outside requirements.txt's {line}: "
                                 "install a version in that range (or change the range) before building")
            return version
    raise SpaceError("requirements.txt names no gradio version range")


def render_card(card: str, sdk_version: str) -> str:
    """The card with `sdk_version` set and the front matter's comment lines left out; the rest as written."""
    import yaml

    parts = card.split("---\n", 2)
    if len(parts) != 3 or parts[0].strip():
        raise SpaceError(f"{CARD} must start with YAML front matter between --- lines")
    # the card's comments are notes for this repository's readers, not for the Space
    lines = [line for line in parts[1].splitlines()
             if not line.startswith("sdk_version:") and not line.lstrip().startswith("#")]
    sdk_line = next((i for i, line in enumerate(lines) if line.startswith("sdk:")), None)
    if sdk_line is None:
        raise SpaceError(f"{CARD} has no `sdk:` line")
    lines.insert(sdk_line + 1, f'sdk_version: "{sdk_version}"')
    front = "\n".join(lines) + "\n"
    missing = [key for key in CARD_KEYS if key not in (yaml.safe_load(front) or {})]
    if missing:
        raise SpaceError(f"{CARD} lacks {', '.join(missing)}")
    return f"---\n{front}---\n{parts[2]}"


def prepare_output(out: Path, root: Path, force: bool) -> None:
    if out == root or out in root.parents:
        raise SpaceError(f"{out} holds the source tree: choose another output folder")
    if out.exists() and not out.is_dir():
        raise SpaceError(f"{out} is a file: choose a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise SpaceError(f"{out} is not empty: choose a new folder, or pass --force to replace its contents")
        for entry in out.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
