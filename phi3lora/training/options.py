"""The optional parts of a training run that need more than a valid config: early stopping needs an eval split, and
an experiment tracker (training_config.report_to) needs its package. Torch-free, so that `resolve_job` refuses a job
that would only fail in its trainer at once, when `train`, `runs start`, the app's Start and its preview check it.

    check_options(config)        refuse early stopping without an eval split, or a tracker that is not installed
    tracker_dirs(output_dir)     while the trainer is built: its tracker writes into the run folder
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

from ..config import ConfigError, JobConfig

# report_to -> (the module it needs, how to install it)
TRACKERS = {"tensorboard": ("tensorboard", "pip install tensorboard"), "trackio": ("trackio", "pip install trackio")}
TRACKIO_PROJECT = "phi3lora"  # one project; each run is a trackio run named by its folder
TENSORBOARD_DIR, TRACKIO_DIR = "tensorboard", "trackio"  # inside the run folder


def check_options(config: JobConfig) -> None:
    settings = config.training_config
    if settings.early_stopping_patience and config.data.eval_size == 0:
        raise ConfigError("training_config.early_stopping_patience: early stopping watches the eval loss, but "
                          "data.eval_size is 0 (no eval split): set data.eval_size above 0 (e.g. 0.1), or "
                          "early_stopping_patience=0")
    check_tracker(settings.report_to)


def check_tracker(report_to: str) -> None:
    if report_to == "none":
        return
    module, install = TRACKERS[report_to]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"training_config.report_to: {report_to} is not installed here: {install} "
                          "(or pip install -r requirements-trackers.txt), or set report_to=none")


@contextlib.contextmanager
def tracker_dirs(output_dir: Path):
    """Point the trackers at the run folder while the Trainer builds their callbacks: TensorBoard's callback reads
    TENSORBOARD_LOGGING_DIR when it is made, trackio reads TRACKIO_DIR when it is first imported (by its callback,
    in a training process of its own). The process's environment is given back afterwards."""
    wanted = {"TENSORBOARD_LOGGING_DIR": str(output_dir / TENSORBOARD_DIR), "TRACKIO_DIR": str(output_dir / TRACKIO_DIR)}
    before = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
