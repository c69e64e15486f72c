"""Push a built Space to the Hugging Face Hub (`python -m phi3lora space push`), and the `space` command.

The push token is read from $HF_TOKEN (or --token-env VAR, or the saved `hf auth login`) and is never printed,
stored in the Space, or uploaded. huggingface_hub is imported here only, when pushing.
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .. import settings
from .space import SOURCE_ROOT, TOKEN, Build, SpaceError, build_space

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_MOUNT = "/data"
ZERO_GPU = "zero-a10g"


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
        log(f"built {len(build.files)} files ({size_text(build.total_bytes)}), gradio {build.sdk_version}")
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


def size_text(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
