"""The run registry: one folder per training run under the data root, and how to read a run's state from it.

Layout of a run (each file has exactly one writer, and each JSON record is written once and never changed,
so the registry needs neither locks nor atomic renames: both are unreliable on network mounts such as a
Space's storage bucket. A reader that meets a record still being written sees no trailing newline or broken
JSON, and treats it as not there yet):

    $PHI3LORA_HOME/runs/<id>/
        run.json                     what the run is (manager, once)
        config.yaml                  the job; data.path points into dataset/
        dataset/<file>               snapshot of the uploaded dataset
        metrics.jsonl                log and progress events (trainer, append-only)
        checkpoints/checkpoint-N/    (trainer)
        adapter_config.json, adapter_model.safetensors, summary.json      (trainer, at the end)
        attempts/<n>/                one per start or resume
            queued.json              the request (manager)
            supervisor.json          pid + start time of the supervising process (manager)
            launch.json              pid + start time of the trainer, its command (supervisor)
            cancel.json              a cancel request (manager)
            outcome.json             how training ended, as the trainer saw it (trainer)
            exit.json                the final word: status, exit code, reason (supervisor)
            train.log                the trainer's stdout and stderr
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from . import settings
from .errors import UserError

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "completed", "failed", "cancelled", "interrupted")
FINISHED = (COMPLETED, FAILED, CANCELLED, INTERRUPTED)
RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")  # also keeps any path out of a run id
HOST = socket.gethostname()


class RunNotFound(UserError, LookupError):
    """No run with that id (or not a valid id at all)."""


def data_root() -> Path:
    """$PHI3LORA_HOME, or ./phi3lora_home (of the working folder)."""
    return Path(settings.get_str("PHI3LORA_HOME")).resolve()


def runs_root() -> Path:
    return data_root() / "runs"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def not_found(run_id: str) -> str:
    """The one answer for a run that does not exist or is not the asker's: its id, never the server's paths."""
    return f"no run {run_id} on this server"


def run_dir(run_id: str) -> Path:
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        shown = repr(run_id) if len(repr(run_id)) <= 60 else repr(run_id)[:57] + "..."
        raise RunNotFound(f"{shown} is not a run id (they look like 20261123-170102-a1b2c3)")
    path = runs_root() / run_id
    if not (path / "run.json").is_file():
        raise RunNotFound(not_found(run_id))
    return path


def child_env() -> dict[str, str]:
    """Environment for the processes we start: the same data root, and phi3lora importable from anywhere
    (the app may have been started from another folder)."""
    package_parent = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PHI3LORA_HOME": str(data_root()), "PYTHONPATH": pythonpath}


def start_detached(command: list[str], log_path: Path) -> dict[str, Any]:
    """Start a process that outlives its caller (its own session), output appended to `log_path` (a file, never
    a pipe: a full pipe would hang it). Returns its identity. A thread reaps it if the caller is still around."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=child_env())
    threading.Thread(target=process.wait, daemon=True).start()
    return process_identity(process.pid)


# --- write-once records -------------------------------------------------------------------------------

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


# --- processes: a pid alone can be reused, so a process is a (pid, start time) pair -------------------------

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


# --- attempts ---------------------------------------------------------------------------------------------

def attempt_dirs(path: Path) -> list[Path]:
    attempts = path / "attempts"
    if not attempts.is_dir():
        return []
    return sorted((p for p in attempts.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def latest_attempt(path: Path) -> Path | None:
    attempts = attempt_dirs(path)
    return attempts[-1] if attempts else None


def current_status(path: Path) -> str | None:
    """The status of a run's latest attempt; None when it has none yet."""
    attempt = latest_attempt(path)
    return attempt_status(attempt)[0] if attempt else None


def has_adapter(path: Path) -> bool:
    """Whether the run folder holds its final adapter (saved when training ends, cancelled runs included)."""
    return (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()


def attempt_status(attempt: Path) -> tuple[str, str | None]:
    """(status, reason) of one attempt, derived from its records and whether its supervisor still lives."""
    exit_record = read_record(attempt / "exit.json")
    if exit_record:
        return exit_record["status"], exit_record.get("reason")
    if is_alive(read_record(attempt / "supervisor.json")):
        return (RUNNING if (attempt / "launch.json").exists() else QUEUED), None
    if read_record(attempt / "supervisor.json") is None and is_recent(attempt / "queued.json"):
        return QUEUED, None  # the manager is starting the supervisor this very moment
    return INTERRUPTED, "its process is gone (the machine or the app restarted while it ran): resume it"


def is_recent(path: Path, seconds: float = 30.0) -> bool:
    """Modified within the last `seconds`: a record whose writer may still be starting up."""
    try:
        return time.time() - path.stat().st_mtime < seconds
    except FileNotFoundError:
        return False


# --- what a reader sees of a run --------------------------------------------------------------------------

class MetricsReader:
    """Follows metrics.jsonl incrementally: each `update()` parses only the lines added since the last one."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.events: list[dict[str, Any]] = []

    def update(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next update
        self.offset += len(complete)
        new = []
        for line in complete.splitlines():
            try:
                new.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.events += new
        return new


@dataclass
class Progress:
    """The latest state of training, folded from the metrics events."""

    step: int = 0
    start_step: int = 0  # where this attempt began (a resumed run starts at its checkpoint)
    max_steps: int = 0
    epoch: float = 0.0
    elapsed: float = 0.0
    train_loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    peak_gpu_memory_gb: float | None = None
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    eval_curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def eta_seconds(self) -> float | None:
        done = self.step - self.start_step
        if done <= 0 or not self.max_steps or self.step >= self.max_steps:
            return None
        return self.elapsed / done * (self.max_steps - self.step)

    def add(self, event: dict[str, Any]) -> None:
        step = event.get("step", self.step)
        if event.get("event") == "start":
            self.start_step, self.elapsed = step, 0.0
        self.step = step
        for key in ("max_steps", "epoch", "elapsed", "tokens_per_second", "peak_gpu_memory_gb"):
            if event.get(key) is not None:
                setattr(self, key, event[key])
        if "loss" in event:
            self.train_loss = event["loss"]
            self.train_curve = [p for p in self.train_curve if p[0] < step] + [(step, event["loss"])]
        if "eval_loss" in event:
            self.eval_loss = event["eval_loss"]
            self.eval_curve = [p for p in self.eval_curve if p[0] < step] + [(step, event["eval_loss"])]
        if "learning_rate" in event:
            self.learning_rate = event["learning_rate"]


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
