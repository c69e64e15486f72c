"""The line for the GPUs: tasks whose kind needs a GPU slot start in the order they were queued, at most
$PHI3LORA_MAX_RUNS at once on one GPU set.

Each waiting or running task has an entry under $PHI3LORA_HOME/queue/ naming its folder (written by the caller
that queues it, removed by its supervisor when it ends). A supervisor takes its turn under a lock on a local file:
GPUs belong to one machine, and flock is reliable on local disks (unlike network mounts, where the data root may be).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .. import settings
from .records import read_record, write_record


def queue_root() -> Path:
    return settings.data_root() / "queue"


def enter(folder: Path) -> Path:
    """Put a task in line; returns its entry."""
    entry = queue_root() / f"{time.time():017.6f}-{secrets.token_hex(4)}.json"
    write_record(entry, {"folder": str(folder)})
    return entry


def leave(folder: Path) -> None:
    for entry in _entries():
        if (read_record(entry) or {}).get("folder") == str(folder):
            entry.unlink(missing_ok=True)


def gpu_set() -> str:
    """Which GPUs a task started now would use: CUDA_VISIBLE_DEVICES, "all" or "cpu"."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return visible or "cpu"
    return "all" if gpu_count() else "cpu"


def gpu_count() -> int:
    from ..base_model import cuda_available  # without importing torch where it was built for no GPU (`runs start`)

    if not cuda_available():
        return 0
    import torch  # here, not at the top: only a supervisor that is about to start a GPU task asks

    return torch.cuda.device_count()


def my_turn(folder: Path, gpus: str, status_of: Callable[[Path], str | None]) -> bool:
    """First in line among queued tasks, and a slot free on this GPU set. Call it under `turn_lock(gpus)`."""
    first_queued, running = None, 0
    for entry in _entries():
        other = Path((read_record(entry) or {}).get("folder", ""))
        status = status_of(other) if other.is_dir() else None
        if status == "queued" and first_queued is None:
            first_queued = other
        elif status == "running" and (read_record(other / "launch.json") or {}).get("gpus") == gpus:
            running += 1
    return running < settings.get_int("PHI3LORA_MAX_RUNS") and first_queued == folder


@contextmanager
def turn_lock(gpus: str):
    key = hashlib.sha256(f"{settings.data_root()}|{gpus}".encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"phi3lora-queue-{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _entries() -> list[Path]:
    root = queue_root()
    return sorted(root.glob("*.json")) if root.is_dir() else []
