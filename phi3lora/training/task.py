"""The body of a training task (tasks/kinds.py "train"): one attempt at a run, in the task's own process.

It trains with a callback that stops at the next step once the run is cancelled, and words a full disk with the
checkpoint it broke. Everything else about how it ends (out of memory, killed, an error) is the task machine's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .. import settings
from ..runs import registry
from .callbacks import StopWhenAsked
from ..tasks.failures import TaskFailed, disk_full, disk_full_cause
from ..tasks.kinds import KINDS
from ..tasks.machine import CANCELLED
from .trainer import PREFIX_CHECKPOINT_DIR, checkpoint_problem, checkpoint_step, train
from ..job_builder import load_job


def run(attempt: Path, request: dict[str, Any]) -> tuple[str, str] | None:
    path = registry.run_dir(request["run"])
    stopper = StopWhenAsked(attempt / "cancel.json")
    _yield_cpu_to_the_app()
    try:
        result = train(load_job(path / "config.yaml"), path, callbacks=[stopper], resume=request["resume"])
    except Exception as error:  # safetensors and torch.save report a full disk as their own errors
        if cause := disk_full_cause(error):
            raise TaskFailed(disk_full(cause, _what_was_written(path), KINDS["train"].retry)) from error
        raise
    if stopper.asked:
        kept = (f"the adapter of step {result.best_step}, the best eval loss, is saved" if result.best_step  # early stopping
                else "the adapter as it stood is saved")
        return CANCELLED, f"cancelled at step {result.global_step} of {result.max_steps}; {kept}"
    return None


def _what_was_written(output_dir: Path) -> str:
    newest = max((output_dir / "checkpoints").glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=checkpoint_step, default=None)
    if newest and checkpoint_problem(newest):
        return f"{newest.name} could not be written in {newest.parent}"
    return f"a file could not be written in {output_dir}"


def _yield_cpu_to_the_app() -> None:
    """Training on the CPU takes every core, and the web app on the same machine would answer slowly: the trainer
    lowers its own priority by $PHI3LORA_TRAINER_NICE (default 10, 0 keeps it), so it trains at full speed on
    whatever the app leaves idle. Training on a GPU barely uses the CPU, and keeps its priority."""
    nice = settings.get_int("PHI3LORA_TRAINER_NICE")
    if not torch.cuda.is_available() and nice:
        os.nice(nice)
