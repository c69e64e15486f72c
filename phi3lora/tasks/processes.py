"""Processes that outlive their caller, and how to tell whether one still runs or to stop it with its children.

A pid alone can be reused, so a process is known by its identity: (pid, start time, host).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from .. import settings

HOST = socket.gethostname()


def process_identity(pid: int) -> dict[str, Any]:
    return {"pid": pid, "started": psutil.Process(pid).create_time(), "host": HOST}


def is_alive(identity: dict[str, Any] | None) -> bool:
    if not identity:
        return False
    if identity.get("host") != HOST:
        return True  # on another machine sharing the data root: we cannot look, so trust it
    try:
        process = psutil.Process(identity["pid"])
        return abs(process.create_time() - identity["started"]) < 1e-3 and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def child_env() -> dict[str, str]:
    """Environment for the processes we start: the same data root, and phi3lora importable from anywhere
    (the app may have been started from another folder)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PHI3LORA_HOME": str(settings.data_root()), "PYTHONPATH": pythonpath}


def start_detached(command: list[str], log_path: Path, reap: bool = True) -> subprocess.Popen:
    """Start a process in its own session (it outlives its caller, and its group can be killed as a whole), output
    appended to `log_path` (a file, never a pipe: a full pipe would hang it). With `reap`, a thread reaps it if the
    caller is still around when it ends; without, the caller waits for it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=child_env())
    if reap:
        threading.Thread(target=process.wait, daemon=True).start()
    return process


def kill_process_tree(pid: int, term_seconds: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left (dataloader workers, accelerate ranks)."""
    for sig, pause in ((signal.SIGTERM, term_seconds), (signal.SIGKILL, 0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
