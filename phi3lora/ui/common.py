"""What the tabs share: turning core errors into messages on the page, where datasets come from, upload
handling, and small formatters. No ML code here either."""
from __future__ import annotations

import functools
import inspect
import logging
import os
import secrets
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import gradio as gr
from gradio.route_utils import API_PREFIX

from .. import settings
from ..policy import limits
from ..data import SUPPORTED_EXTENSIONS
from ..data.samples import shipped_samples
from ..errors import UserError

log = logging.getLogger("phi3lora.ui")

MAX_MESSAGE = 2000  # characters of an error shown on the page


# --- errors ------------------------------------------------------------------------------------------------

def shows_errors(fn):
    """Wrap an event handler (a function or a generator) so every failure reaches the page as one message and
    the server stays up: a core UserError becomes gr.Error(its message); anything unexpected is logged and named."""

    def page_error(error: Exception) -> gr.Error:
        if isinstance(error, gr.Error):
            return error
        if isinstance(error, UserError):
            message = str(error)  # cut: a message must never carry megabytes of what a user sent back to them
            return gr.Error(message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + " …",
                            print_exception=False)
        # a bug, not the user's doing: keep the page and the server alive
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Unexpected error ({type(error).__name__}: {error}). The server log has the details; "
                        "try again or report it.")

    if inspect.isgeneratorfunction(fn):  # Gradio streams only from a generator function, so stay one
        @functools.wraps(fn)
        def streaming_handler(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as error:
                raise page_error(error) from None

        return streaming_handler

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            raise page_error(error) from None

    return handler


# --- uploads -------------------------------------------------------------------------------------------------

def max_upload_mb() -> float:
    """$PHI3LORA_MAX_UPLOAD_MB (may be fractional), default 100."""
    return settings.get_float("PHI3LORA_MAX_UPLOAD_MB")


def max_upload_bytes() -> int:
    return int(max_upload_mb() * 1024 * 1024)


def describe_size(mb: float) -> str:
    return f"{mb:g} MB" if mb >= 1 else f"{mb * 1024:.0f} KB"


def uploads_root() -> Path:
    return settings.data_root() / "uploads"


def session_folder(folder: str | None) -> str:
    """This visitor's private upload folder (random name), made on their first upload."""
    return folder or str(uploads_root() / secrets.token_hex(16))


def prune_uploads(max_age_hours: float = 24.0) -> None:
    """Remove upload folders left by sessions that ended without their cleanup running (an app restart loses
    every session's state). A day old is long past any session's use of them: runs keep their own snapshot."""
    root = uploads_root()
    if not root.is_dir():
        return
    for folder in root.iterdir():
        try:
            if time.time() - folder.stat().st_mtime > max_age_hours * 3600:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            continue


def remove_folder(path: str | None) -> None:
    """gr.State delete_callback: a closed session's private upload folder goes with it."""
    if path and Path(path).resolve().is_relative_to(uploads_root().resolve()):
        shutil.rmtree(path, ignore_errors=True)


def take_upload(cached: str, folder: str | Path) -> Path:
    """Move an uploaded file out of Gradio's cache into a private folder, so no one can fetch it by its URL.
    Gradio serves anything in its cache to anyone who has the URL; the data root is never served."""
    source = Path(cached)
    if source.suffix.lower() not in SUPPORTED_EXTENSIONS:
        forget_cached(source)
        raise gr.Error(f"{source.name}: unsupported file type; upload {', '.join(SUPPORTED_EXTENSIONS)}")
    target_dir = Path(folder)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / source.name
    shutil.copyfile(source, target)
    forget_cached(source)
    return target


def forget_cached(path: str | Path) -> None:
    cache = Path(gr.utils.get_upload_folder()).resolve()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(cache) or resolved == cache:
        return  # never delete anything outside Gradio's cache
    resolved.unlink(missing_ok=True)
    if resolved.parent != cache:
        shutil.rmtree(resolved.parent, ignore_errors=True)  # the random folder Gradio made for this upload


# --- Gradio's upload cache -------------------------------------------------------------------------------------
# Anyone who can reach the page may POST files to /gradio_api/upload without calling any event (on a Space: anyone
# at all), and Gradio keeps each in its cache. Two bounds: a lifetime (Gradio's own delete_cache, set by build_app)
# and a total (UploadCacheBound, below).

def upload_cache_lifetime() -> tuple[int, int]:
    """gr.Blocks(delete_cache=...): (how often to look, in seconds; how old a cached file may get), the age being
    $PHI3LORA_CACHE_SECONDS."""
    age = limits.limit("PHI3LORA_CACHE_SECONDS")
    return max(1, min(age, 600) // 2), age


def prune_upload_cache() -> None:
    """Delete the oldest files of Gradio's cache until it holds at most $PHI3LORA_CACHE_MAX_MB."""
    cache = Path(gr.utils.get_upload_folder())
    most = limits.limit("PHI3LORA_CACHE_MAX_MB") * 1024 * 1024
    files = []
    # os.walk, not rglob: handlers remove upload folders while this runs, and os.walk skips what vanished
    for folder, _, names in os.walk(cache):
        for name in names:
            path = Path(folder) / name
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                files.append((info.st_mtime, info.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= most:
            break
        path.unlink(missing_ok=True)
        total -= size
    _remove_empty_folders(cache)


def _remove_empty_folders(cache: Path, min_age: float = 60.0) -> None:
    """Gradio leaves one folder per upload; empty ones go once old enough that no upload is moving in."""
    for folder in cache.iterdir():
        try:
            if folder.is_dir() and not any(folder.iterdir()) and time.time() - folder.stat().st_mtime > min_age:
                folder.rmdir()
        except OSError:
            continue


class UploadCacheBound:
    """ASGI middleware for Gradio's app: after each upload, before its answer leaves, prune the cache to
    $PHI3LORA_CACHE_MAX_MB (the oldest files go first)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if not (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"].endswith(f"{API_PREFIX}/upload")):
            return await self.app(scope, receive, send)

        async def send_once_pruned(message):
            if message["type"] == "http.response.start":
                try:
                    await anyio.to_thread.run_sync(prune_upload_cache)
                except OSError:  # the next upload prunes again; this one must not fail for it
                    log.warning("could not prune Gradio's upload cache", exc_info=True)
            await send(message)

        await self.app(scope, receive, send_once_pruned)


# --- downloads -------------------------------------------------------------------------------------------------

DOWNLOADS = Path(tempfile.gettempdir()) / "phi3lora-downloads"  # served only by ui/downloads.py's route


def download_path(name: str) -> Path:
    """A fresh path to write a file the page will offer for download (downloads.offer links it), in a folder of
    its own with an unguessable name: the token of its link. Downloads older than $PHI3LORA_DOWNLOAD_SECONDS
    are removed."""
    if DOWNLOADS.is_dir():
        for folder in DOWNLOADS.iterdir():
            try:
                if time.time() - folder.stat().st_mtime > limits.limit("PHI3LORA_DOWNLOAD_SECONDS"):
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                continue
    target = DOWNLOADS / secrets.token_hex(16) / name
    target.parent.mkdir(parents=True)
    return target


# --- where datasets come from ----------------------------------------------------------------------------------

def bundled_datasets() -> dict[str, Path]:
    """Display name -> file, for the datasets that ship with the app: the package's samples (data.samples),
    whatever they are, in a clone and on a Space alike."""
    return {name: sample.path for name, sample in shipped_samples().items()}


def is_bundled(path: str | Path) -> bool:
    resolved = Path(path).resolve()
    return any(resolved == p.resolve() for p in bundled_datasets().values())


def hub_reachable(timeout: float = 3.0) -> str | None:
    """None when the Hugging Face hub can be reached, else why not (one sentence)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "this server runs offline (HF_HUB_OFFLINE is set)"
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        port = endpoint.port or (80 if endpoint.scheme == "http" else 443)  # the endpoint's own port, when it names one
    except ValueError:
        return f"HF_ENDPOINT ({endpoint.netloc}) names no usable port"
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as error:
        return f"{endpoint.netloc} cannot be reached from this server ({error.strerror or error})"
    return None


# --- formatting ----------------------------------------------------------------------------------------------

def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def timestamp(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch)) if epoch else "-"


def number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def method_name(method: str) -> str:
    return {"lora": "LoRA", "qlora": "QLoRA", "dpo": "DPO"}.get(method, method)
