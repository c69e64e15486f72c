"""The run registry: one folder per training run under the data root, and how to read a run's state from it.

Layout of a run (each file has exactly one writer; JSON records are written once, see tasks/records.py):

    $PHI3LORA_HOME/runs/<id>/
        run.json                     what the run is (caller, once)
        config.yaml                  the job; data.path points into dataset/
        dataset/<file>               snapshot of the uploaded dataset
        metrics.jsonl                log and progress events (trainer, append-only)
        checkpoints/checkpoint-N/    (trainer)
        adapter_config.json, adapter_model.safetensors, summary.json      (trainer, at the end)
        attempts/<n>/                one training task per start or resume (tasks/machine.py: its records, train.log)
        evaluation/                  the latest evaluation task and its results (inference/evaluation.py)
        exports/<n>/                 one export task per export, and its merged model (deploy/export.py)
"""
from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import UserError
from ..tasks import machine

RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")  # also keeps any path out of a run id


class RunNotFound(UserError, LookupError):
    """No run with that id (or not a valid id at all)."""


def runs_root() -> Path:
    return settings.data_root() / "runs"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def not_found(run_id: str) -> str:
    """The one answer for a run that does not exist or is not the asker's: its id, never the server's paths."""
    return f"no run {run_id} on this server"


def run_dir(run_id: str) -> Path:
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        shown = repr(run_id) if len(repr(run_id)) <= 60 else repr(run_id)[:57] + "..."
        raise RunNotFound(f"{shown} is not a run id (they look like 20261123-170102-a1b2c3)")
    path = runs_root() / run_id
    if not (path / "run.json").is_file():
        raise RunNotFound(not_found(run_id))
    return path


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
    return machine.status(attempt) if attempt else None


def adapter_problem(run_id: str, path: Path, verb: str, doing: str) -> str | None:
    """Why the run's adapter cannot be used yet for `verb` ("export"), worded with `doing` ("export its adapter"):
    its training is queued or running, or ended without one. None when it can."""
    status = current_status(path)
    if status in machine.ACTIVE:
        return f"run {run_id} is {status}: {doing} once training has finished"
    if not has_adapter(path):
        ended = f" (its training ended {status})" if status else ""
        return f"run {run_id} has no adapter yet{ended}: there is nothing to {verb}; resume or rerun its training first"
    return None


def has_adapter(path: Path) -> bool:
    """Whether the run folder holds its final adapter (saved when training ends, cancelled runs included)."""
    return (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()


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
    best_step: int | None = None  # early stopping: the step whose adapter was kept
    stop_reason: str | None = None  # early stopping: which step was kept and why training ended there

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
            self.best_step = self.stop_reason = None  # a resumed attempt says it again when it ends
        if event.get("event") == "best":
            self.best_step, self.stop_reason = event.get("best_step"), event.get("stop_reason")
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
