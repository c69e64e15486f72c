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

huggingface_hub is imported by push only, so `build` and the rest of the CLI stay light.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

from . import settings
from .errors import UserError

SOURCE_ROOT = Path(__file__).resolve().parents[1]
CARD = Path("space_config") / "card.md"
# Everything a Space gets from the source tree, as globs relative to it (plus space_config/'s other files).
INCLUDE = ("app.py", "requirements.txt", "phi3lora/**/*.py", "phi3lora/demo_model/*")
REQUIRED = ("app.py", "requirements.txt", "phi3lora/__init__.py")
CARD_KEYS = ("title", "sdk", "sdk_version", "python_version", "app_file", "suggested_hardware", "hf_oauth",
             "startup_duration_timeout", "models", "license", "short_description")
TOKEN = re.compile(rb"hf_[A-Za-z0-9]{30,}")  # a user or org access token
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_MOUNT = "/data"
ZERO_GPU = "zero-a10g"


class SpaceError(UserError, ValueError):
    """The Space cannot be built or pushed as asked (a bad name, a missing token, the Hub refused, ...)."""


@dataclass
class Build:
    folder: Path
    files: list[str]  # paths relative to `folder`, sorted
    total_bytes: int
    sdk_version: str


@dataclass
class PushOptions:
    repo: str
    private: bool = False
    hardware: str | None = None
    storage_bucket: str | None = None
    mount_path: str = DEFAULT_MOUNT
    variables: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)  # names of environment variables whose values become secrets
    token_env: str | None = None  # None: $HF_TOKEN or the saved login


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


# --- push ----------------------------------------------------------------------------------------------------

def push_space(options: PushOptions, source_root: str | Path = SOURCE_ROOT,
               log: Callable[[str], object] = print) -> str:
    """Build and push the Space; returns its URL. Every failure a user can cause raises SpaceError."""
    check_repo_id(options.repo, "--repo")
    if options.storage_bucket:
        check_repo_id(options.storage_bucket, "--storage-bucket")
    token = read_token(options.token_env)
    check_online()
    check_hardware(options.hardware)
    variables = space_variables(options)
    secrets = read_secrets(options.secrets, token)
    for note in _notes(options):
        log(note)
    with tempfile.TemporaryDirectory(prefix="phi3lora-space-") as tmp:
        build = build_space(Path(tmp) / "space", source_root)
        log(f"built {len(build.files)} files ({_size(build.total_bytes)}), gradio {build.sdk_version}")
        _configure_and_upload(options, token, build, variables, secrets, log)
    url = f"https://huggingface.co/spaces/{options.repo}"
    log(f"done: {url}")
    return url


def _notes(options: PushOptions) -> list[str]:
    notes = []
    if not options.storage_bucket:
        notes.append("note: no --storage-bucket: runs stay on the Space's own disk, lost whenever it restarts "
                     "(every push restarts it)")
    if not options.private:
        notes.append("note: without --private a new Space is public: anyone who opens it can use the app, "
                     "training on its hardware included")
    return notes


def _configure_and_upload(options: PushOptions, token: str, build: Build, variables: dict[str, str],
                          secrets: dict[str, str], log: Callable[[str], object]) -> None:
    """Settings first, files last: each settings change restarts the Space, and the upload starts the build."""
    from huggingface_hub import HfApi, Volume

    api, repo = HfApi(token=token), options.repo
    with hub_step(f"creating the Space {repo}"):
        api.create_repo(repo, repo_type="space", space_sdk="gradio", private=options.private, exist_ok=True)
    log(f"Space {repo} ready")
    if options.hardware:
        with hub_step(f"requesting {options.hardware} hardware"):
            api.request_space_hardware(repo, options.hardware)
        log(f"hardware requested: {options.hardware}")
    if options.storage_bucket:
        with hub_step(f"creating or mounting the storage bucket {options.storage_bucket}"):
            api.create_bucket(options.storage_bucket, private=True, exist_ok=True)
            api.set_space_volumes(repo, [Volume(type="bucket", source=options.storage_bucket,
                                                mount_path=options.mount_path)])
        log(f"bucket {options.storage_bucket} mounted at {options.mount_path}")
    for key, value in variables.items():
        with hub_step(f"setting the variable {key}"):
            api.add_space_variable(repo, key, value, description=VARIABLE_HELP.get(key))
        log(f"variable {key}={value}")
    for key, value in secrets.items():
        with hub_step(f"setting the secret {key}"):
            api.add_space_secret(repo, key, value)
        log(f"secret {key} set (value not shown)")
    with hub_step(f"uploading to {repo}"):
        api.upload_folder(repo_id=repo, repo_type="space", folder_path=build.folder, delete_patterns="*",
                          commit_message=f"phi3lora space push (gradio {build.sdk_version})")
    log(f"uploaded {len(build.files)} files; the Space rebuilds now")


VARIABLE_HELP = {"PHI3LORA_HOME": "where runs and uploads live: the storage bucket's mount, so they survive restarts"}


def check_repo_id(repo: str, flag: str) -> None:
    if not REPO_ID.match(repo or "") or ".." in repo or "--" in repo or repo.endswith((".git", ".")):
        raise SpaceError(f"{flag} {repo!r} is not a valid id: expected OWNER/NAME (letters, digits, '-', '_', '.')")


def read_token(token_env: str | None) -> str:
    """The push token: $token_env when given, else $HF_TOKEN or the saved `hf auth login`."""
    if token_env:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise SpaceError(f"${token_env} is not set: put a Hugging Face write token in it "
                             "(https://huggingface.co/settings/tokens)")
        return token
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise SpaceError("no Hugging Face token: set $HF_TOKEN to a write token (https://huggingface.co/settings/tokens) "
                         "or run `hf auth login`")
    return token


def check_online() -> None:
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise SpaceError("HF_HUB_OFFLINE is set: unset it to push to the Hub")


def check_hardware(hardware: str | None) -> None:
    from huggingface_hub import SpaceHardware

    if hardware is None:
        return
    if hardware == ZERO_GPU:
        raise SpaceError("ZeroGPU cannot host training: it lends a GPU for minutes per call, and training is a long "
                         "background process; pick dedicated hardware such as l4x1, a10g-large or a100-large")
    flavours = [flavour.value for flavour in SpaceHardware if flavour.value != ZERO_GPU]
    if hardware not in flavours:
        raise SpaceError(f"--hardware {hardware!r} is not a Space hardware flavour: one of {', '.join(flavours)}")


def space_variables(options: PushOptions) -> dict[str, str]:
    """The Space's (public) variables: PHI3LORA_HOME on the bucket's mount when there is one, then --variable."""
    if not options.mount_path.startswith("/") or options.mount_path == "/":
        raise SpaceError(f"--mount-path {options.mount_path!r} must be an absolute folder such as /data")
    variables = {"PHI3LORA_HOME": options.mount_path} if options.storage_bucket else {}
    for key, value in options.variables.items():
        _check_env_key(key, "--variable")
        _check_setting(key, value, "--variable")
        if TOKEN.search(value.encode()):
            raise SpaceError(f"--variable {key} looks like a token, and variables are public: use --secret {key}")
        variables[key] = value
    return variables


def _check_setting(name: str, value: str, flag: str) -> None:
    """A PHI3LORA_* value the Space would refuse at start is refused here, before anything is pushed."""
    try:
        settings.check_value(name, value)
    except settings.SettingsError as error:
        raise SpaceError(f"{flag} {error}") from None


def read_secrets(names: list[str], push_token: str) -> dict[str, str]:
    """{name: value of $name} for each --secret; never the push token itself (give the Space its own token)."""
    secrets = {}
    for name in names:
        _check_env_key(name, "--secret")
        value = os.environ.get(name, "")
        _check_setting(name, value, "--secret")
        if not value:
            raise SpaceError(f"--secret {name}: ${name} is not set here (its value becomes the Space's secret)")
        if value == push_token:
            raise SpaceError(f"--secret {name} holds the token you push with: give the Space its own read token "
                             "(and push with --token-env pointing at your write token)")
        secrets[name] = value
    return secrets


def _check_env_key(key: str, flag: str) -> None:
    if not ENV_KEY.match(key):
        raise SpaceError(f"{flag} {key!r}: a name is letters, digits and '_', not starting with a digit")


@contextmanager
def hub_step(doing: str) -> Iterator[None]:
    """Turn what the Hub (or the network) answers into one plain sentence. Only the status and the Hub's own
    message are kept: huggingface_hub's exception texts carry URLs and request details, never printed raw."""
    try:
        yield
    except SpaceError:
        raise
    except Exception as error:
        message = _plain_message(error, doing)
        if message is None:  # not the Hub's nor the network's doing: a bug, with its traceback
            raise
        raise SpaceError(message) from None


def _plain_message(error: Exception, doing: str) -> str | None:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, ValueError):  # how huggingface_hub reports what the Hub refuses, e.g. the card's metadata
        return f"the Hub refused this while {doing}: {_one_line(str(error))}"
    cause: BaseException | None = error
    while cause is not None:  # huggingface_hub wraps some failures (e.g. an LFS upload's) in a RuntimeError
        if isinstance(cause, HfHubHTTPError):
            return _http_message(cause, doing)
        if isinstance(cause, OfflineModeIsEnabled):
            return "HF_HUB_OFFLINE is set: unset it to push to the Hub"
        if _is_network_error(cause):
            return (f"cannot reach the Hub while {doing} ({type(cause).__name__}): check the network connection "
                    "(and HF_ENDPOINT if you set it)")
        cause = cause.__cause__
    return None


def _http_message(error, doing: str) -> str:
    status = getattr(error.response, "status_code", None)
    said = _one_line(getattr(error, "server_message", None) or "")
    said = f" (the Hub says: {said})" if said else ""
    if status == 401:
        return (f"the Hub refused the token while {doing} (401): it is invalid or expired; make a write token at "
                f"https://huggingface.co/settings/tokens{said}")
    if status == 403:
        return (f"the token is not allowed to do this while {doing} (403): it needs write access to that namespace"
                f"{said}")
    if status == 404:
        return f"not found while {doing} (404): check the owner and the name{said}"
    return f"the Hub answered {status} while {doing}{said}"


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return TOKEN.sub(b"hf_***", line.encode()).decode()[:300]


def _is_network_error(error: Exception) -> bool:
    """A connection, DNS, TLS or timeout failure of huggingface_hub's HTTP client (httpx2 in 2.x, httpx before)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"TransportError", "TimeoutException", "ConnectionError"}) or isinstance(error, TimeoutError)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


# --- CLI -----------------------------------------------------------------------------------------------------

def add_space_command(subparsers) -> None:
    """Register `space build` and `space push` on the CLI's subparsers (phi3lora/cli.py)."""
    parser = subparsers.add_parser("space", help="build or push the app as a Hugging Face Space")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="write a ready-to-push Space folder")
    build.add_argument("out", help="a new or empty folder")
    build.add_argument("--force", action="store_true", help="empty OUT first if it is not empty")
    build.set_defaults(run=_build_command)

    push = actions.add_parser("push", help="build, then create or update the Space on the Hub")
    push.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the Space's id")
    push.add_argument("--private", action="store_true", help="create the Space private (an existing one keeps its visibility)")
    push.add_argument("--hardware", metavar="FLAVOR", help="request this hardware, e.g. l4x1, a10g-large, a100-large (billed)")
    push.add_argument("--storage-bucket", metavar="OWNER/BUCKET",
                      help="mount this storage bucket (created private if missing) and keep runs on it (PHI3LORA_HOME)")
    push.add_argument("--mount-path", default=DEFAULT_MOUNT, help=f"where the bucket mounts (default {DEFAULT_MOUNT})")
    push.add_argument("--variable", action="append", default=[], metavar="KEY=VALUE",
                      help="a public Space variable, e.g. --variable PHI3LORA_MAX_UPLOAD_MB=200")
    push.add_argument("--secret", action="append", default=[], metavar="KEY",
                      help="a Space secret named KEY, its value read from $KEY here (never from the command line)")
    push.add_argument("--token-env", metavar="VAR", help="read the push token from $VAR (default: $HF_TOKEN or the saved login)")
    push.set_defaults(run=_push_command)


def _build_command(args) -> int:
    build = build_space(args.out, force=args.force)
    tops = sorted({name.split("/")[0] for name in build.files})
    print(f"wrote {len(build.files)} files ({_size(build.total_bytes)}) to {build.folder}: {', '.join(tops)}")
    print(f"sdk_version {build.sdk_version}; push it with: python -m phi3lora space push --repo OWNER/NAME")
    return 0


def _push_command(args) -> int:
    options = PushOptions(repo=args.repo, private=args.private, hardware=args.hardware,
                          storage_bucket=args.storage_bucket, mount_path=args.mount_path,
                          variables=_parse_variables(args.variable), secrets=args.secret, token_env=args.token_env)
    push_space(options)
    return 0


def _parse_variables(items: list[str]) -> dict[str, str]:
    variables = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SpaceError(f"--variable {item!r}: expected KEY=VALUE")
        variables[key.strip()] = value
    return variables

