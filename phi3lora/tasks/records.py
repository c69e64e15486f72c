"""Write-once JSON records and logs: how every process of a task reports to every other, through files alone.

Each record has exactly one writer and is written once, never changed, so readers need neither locks nor atomic
renames (both are unreliable on network mounts such as a Space's storage bucket). A reader that meets a record
still being written sees no trailing newline or broken JSON, and treats it as not there yet.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Create `path` holding one JSON object and a newline; refuses to overwrite (each record is written once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_record(path: Path) -> dict[str, Any] | None:
    """The record, or None while it does not exist or is still being written."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not text.endswith("\n"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def is_recent(path: Path, seconds: float = 30.0) -> bool:
    """Modified within the last `seconds`: a record whose writer may still be starting up."""
    try:
        return time.time() - path.stat().st_mtime < seconds
    except FileNotFoundError:
        return False


def log_tail(path: Path, max_bytes: int = 4000) -> str:
    """The end of a log file, read from its end (logs can be large)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            tail = f.read()
    except FileNotFoundError:
        return ""
    text = tail.decode("utf-8", errors="replace")
    # progress bars redraw with carriage returns; keep only what the last redraw shows
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join(lines[1:] if size > max_bytes else lines)
