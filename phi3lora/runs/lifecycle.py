"""Training runs, as the app and the CLI see them: start, queue, watch, cancel, resume, wait, delete.

A run is a folder in the registry (registry.py); each start or resume is one training task in it (attempts/<n>/), run
by the task machine (tasks/machine.py) whose body is training/task.py. So the caller can go away and come back
(page reload, app restart) and find the run where it is.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import data
from ..policy import limits
from . import registry
from .lineage import find_parent, lineage_record, snapshot as snapshot_parent
from ..base_model import choose_base_model
from ..policy.allowed_models import remote_code_allowed
from ..config import JobConfig
from ..errors import UserError
from ..tasks import gpu_memory, launch, machine, queue
from ..tasks.machine import ACTIVE, FINISHED, RUNNING
from ..training import memory_estimate  # torch-free arithmetic
from ..tasks.records import log_tail as read_log_tail, read_record, write_record
from ..job_builder import load_job, resolve_job, write_job_file

POLL_SECONDS = 0.5
START_WAIT_SECONDS = 15.0  # how long starting a run waits for a busy chat model to finish its answer and let go


class RunStateError(UserError, RuntimeError):
    """The run is not in a state that allows this (e.g. resuming a running run)."""


# --- what a caller sees of a run --------------------------------------------------------------------------

@dataclass
class RunInfo:
    id: str
    status: str
    reason: str | None
    method: str
    base_model: str
    dataset: str
    created_at: float
    attempts: int
    pid: int | None
    step: int
    max_steps: int
    epoch: float
    train_loss: float | None
    eval_loss: float | None
    learning_rate: float | None
    tokens_per_second: float | None
    peak_gpu_memory_gb: float | None
    elapsed: float
    eta_seconds: float | None
    adapter: str | None
    path: str
    best_step: int | None = None  # early stopping: the step whose adapter was kept
    stop_reason: str | None = None  # early stopping: which step was kept and why training ended there
    lineage: dict | None = None  # a DPO run's parent and pairs (lineage.py)

    def to_dict(self) -> dict:
        return asdict(self)


def run_info(run_id: str, progress: registry.Progress | None = None) -> RunInfo:
    """A run's status and latest figures. Pass the Progress a watcher keeps to avoid re-reading metrics."""
    path = registry.run_dir(run_id)
    meta = read_record(path / "run.json")
    if meta is None:
        raise registry.RunNotFound(f"run {run_id} is being created")
    attempt = registry.latest_attempt(path)
    state = (attempt and machine.state(attempt)) or machine.TaskState(machine.INTERRUPTED, "never queued")
    status, reason = state.status, state.reason
    launch = read_record(attempt / "launch.json") if attempt else None
    if progress is None:
        progress = registry.Progress()
        reader = registry.MetricsReader(path / "metrics.jsonl")
        for event in reader.update():
            progress.add(event)
    adapter = path / "adapter_model.safetensors"
    return RunInfo(
        id=run_id, status=status, reason=reason, method=meta["method"], base_model=meta["base_model"],
        dataset=meta["dataset"], created_at=meta["created_at"], attempts=len(registry.attempt_dirs(path)),
        pid=launch["body"]["pid"] if launch and status == RUNNING else None,
        step=progress.step, max_steps=progress.max_steps, epoch=progress.epoch,
        train_loss=progress.train_loss, eval_loss=progress.eval_loss, learning_rate=progress.learning_rate,
        tokens_per_second=progress.tokens_per_second, peak_gpu_memory_gb=progress.peak_gpu_memory_gb,
        elapsed=progress.elapsed, eta_seconds=progress.eta_seconds if status == RUNNING else None,
        adapter=str(path) if adapter.is_file() and status in FINISHED else None, path=str(path),
        best_step=progress.best_step, stop_reason=progress.stop_reason,
        lineage=meta.get("lineage"),
    )


def list_runs() -> list[RunInfo]:
    root = registry.runs_root()
    names = (p.name for p in root.iterdir()) if root.is_dir() else ()
    ids = sorted((name for name in names if registry.RUN_ID.fullmatch(name)), reverse=True)
    infos = []
    for run_id in ids:
        try:
            infos.append(run_info(run_id))
        except registry.RunNotFound:
            continue  # a run being created or deleted right now
    return infos


def log_tail(run_id: str, max_bytes: int = 4000) -> str:
    attempt = registry.latest_attempt(registry.run_dir(run_id))
    return read_log_tail(attempt / "train.log", max_bytes) if attempt else ""


# --- start, cancel, resume, wait, delete ------------------------------------------------------------------

def start_run(config: JobConfig, owner: str | None = None, processes: int | None = None,
              accelerate_config: str | None = None, data_note: str | None = None) -> str:
    """Check the dataset, snapshot it into a new run folder, and queue the run. Returns the run id.
    `owner` (who started it, see policy/access.py) is recorded with the run. `processes` (default: one per visible
    GPU) and `accelerate_config` (a cluster's accelerate config file) say how it launches (tasks/launch.py); every
    resume launches the same way. A DPO job (training_config.objective) records its lineage (lineage.py), with
    `data_note` saying where its pairs came from (the votes of a run, and what they left out)."""
    if not config.data.path:
        raise UserError("no dataset: set data.path (--data)")
    examples, _ = data.usable_examples(config)  # refuse bad data now, not in a failed run
    _check_launch(config, processes, accelerate_config)  # a missing package, too many processes: before any work
    config, _ = resolve_job(config)  # the YAML holds every setting the run will use, model defaults included
    _check_limits(config, owner)  # the record limit: read_dataset stops reading past it
    memory_estimate.check_fits(config)  # a run that would not fit in its device's free memory: refused now
    _ask_for_the_gpu(config, f"a training run of {Path(config.model.base_model or 'the default base').name}")

    run_id = registry.new_run_id()
    path = registry.runs_root() / run_id
    snapshot = path / "dataset" / Path(config.data.path).name
    snapshot.parent.mkdir(parents=True)
    shutil.copyfile(config.data.path, snapshot)
    config.data.path = str(snapshot)
    lineage = None
    if config.training_config.objective == "dpo":  # the parent's adapter, snapshot as the dataset is
        parent = find_parent(config.model.adapter)
        config.model.adapter = str(snapshot_parent(parent, path))
        lineage = lineage_record(parent, examples, data_note)
    write_job_file(config, path)  # the one writing of the run's job; its trainer reads it and leaves it as it is
    write_record(path / "run.json", {
        "id": run_id, "created_at": time.time(), "method": config.method,
        "base_model": config.model.base_model, "dataset": snapshot.name, "owner": owner,
        **({"lineage": lineage} if lineage else {}),
    })
    _queue_attempt(path, resume=False, processes=processes, accelerate_config=accelerate_config)
    return run_id


def _check_limits(config: JobConfig, owner: str | None) -> None:
    """The operator's limits (policy/limits.py) and the remote-code switch; each refusal names what it enforces."""
    training = config.training_config
    limits.check("PHI3LORA_MAX_SEQ_LENGTH", training.max_length, "training_config.max_length")
    limits.check("PHI3LORA_MAX_STEPS", training.max_steps, "training_config.max_steps")
    limits.check("PHI3LORA_MAX_EPOCHS", training.num_train_epochs, "training_config.num_train_epochs")
    if owner is not None:
        active = sum(1 for info in list_runs() if info.status in ACTIVE and _owner(info.id) == owner)
        limits.check("PHI3LORA_MAX_QUEUED_PER_USER", active + 1, "your number of queued and running runs")
    if config.model.trust_remote_code and not remote_code_allowed():
        raise UserError("model.trust_remote_code: this server does not run code from model repositories "
                        "(its owner can allow it with PHI3LORA_ALLOW_REMOTE_CODE=1)")


def _owner(run_id: str) -> str | None:
    return (read_record(registry.run_dir(run_id) / "run.json") or {}).get("owner")


def cancel_run(run_id: str) -> str:
    """Ask a queued or running run to stop. Training stops at its next step and saves the adapter as it stands."""
    attempt = registry.latest_attempt(registry.run_dir(run_id))
    status = machine.status(attempt) if attempt else None
    if status not in ACTIVE:
        raise RunStateError(f"run {run_id} is {status}: only a queued or running run can be cancelled")
    return machine.cancel(attempt)


def resume_run(run_id: str) -> None:
    """Queue a new attempt that continues from the newest whole checkpoint."""
    path = registry.run_dir(run_id)
    status = registry.current_status(path) or machine.INTERRUPTED  # never queued: as good as interrupted
    if status not in (machine.FAILED, machine.CANCELLED, machine.INTERRUPTED):
        raise RunStateError(f"run {run_id} is {status}: only a failed, cancelled or interrupted run can be resumed")
    _refuse_while_reading_the_adapter(run_id, "resumed")
    first = read_record(registry.attempt_dirs(path)[0] / "queued.json") if registry.attempt_dirs(path) else None
    processes, accelerate_config = (first or {}).get("processes"), (first or {}).get("accelerate_config")
    config = load_job(path / "config.yaml")
    _check_launch(config, processes, accelerate_config)  # a package may have gone since
    _ask_for_the_gpu(config, f"training run {run_id}")
    _queue_attempt(path, resume=True, processes=processes, accelerate_config=accelerate_config)


def wait_for_run(run_id: str, timeout: float | None = None) -> RunInfo:
    """Block until the run has finished (or the timeout passes); returns its latest info either way."""
    deadline = None if timeout is None else time.monotonic() + timeout
    watcher = RunWatcher(run_id)
    while True:
        info = watcher.info()
        if info.status in FINISHED or (deadline is not None and time.monotonic() >= deadline):
            return info
        time.sleep(POLL_SECONDS)


def delete_run(run_id: str) -> None:
    path = registry.run_dir(run_id)
    status = registry.current_status(path)
    if status in ACTIVE:
        raise RunStateError(f"run {run_id} is {status}: cancel it first")
    _refuse_while_reading_the_adapter(run_id, "deleted")
    shutil.rmtree(path)


def _refuse_while_reading_the_adapter(run_id: str, what: str) -> None:
    """A merge and an evaluation read the adapter: it must not change or vanish underneath them."""
    path = registry.run_dir(run_id)
    if any(machine.status(export) in ACTIVE for export in (path / "exports").glob("*")):
        raise RunStateError(f"run {run_id} is being exported: it can be {what} once the export has finished")
    if machine.status(path / "evaluation") in ACTIVE:
        raise RunStateError(f"run {run_id} is being evaluated: it can be {what} once the evaluation has finished")


class RunWatcher:
    """Follows one run cheaply: metrics are read incrementally, the status from a few small records."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.reader = registry.MetricsReader(registry.run_dir(run_id) / "metrics.jsonl")
        self.progress = registry.Progress()

    def info(self) -> RunInfo:
        for event in self.reader.update():
            self.progress.add(event)
        return run_info(self.run_id, self.progress)


# --- queueing an attempt ----------------------------------------------------------------------------------------

def _check_launch(config: JobConfig, processes: int | None, accelerate_config: str | None) -> None:
    """Refuse here, before anything is queued, a launch that would only fail in its ranks (tasks/launch.py)."""
    launch.check_launch(processes, config.training_config.distributed, queue.gpu_count, accelerate_config)


def _queue_attempt(path: Path, resume: bool, processes: int | None = None, accelerate_config: str | None = None) -> Path:
    attempt = path / "attempts" / str(len(registry.attempt_dirs(path)) + 1)
    config = load_job(path / "config.yaml")
    machine.submit(attempt, "train", run=path.name, resume=resume, distributed=config.training_config.distributed,
                   processes=processes, accelerate_config=accelerate_config,
                   needs_bitsandbytes=config.needs_bitsandbytes,
                   gpu=_gpu_need(config, f"training run {path.name}"))  # its body asks the GPU's owner with it
    return attempt


def _gpu_need(config: JobConfig, what: str) -> dict:
    base = choose_base_model(config.model.base_model).name_or_path
    return gpu_memory.gpu_request("train", what, base, config.model.dtype, config.model.load_in_4bit)


def _ask_for_the_gpu(config: JobConfig, what: str) -> None:
    """Ask the GPU's owner (tasks/gpu_memory.py) at the start, so that a refusal comes at once: an idle chat model
    lets go, a busy one or an evaluation is named. Only when someone holds the GPU (else there is nothing to ask)
    and no run is ahead in the GPU queue (else this run waits its turn, and its body asks then)."""
    if gpu_memory.holders() and not any(info.status in ACTIVE for info in list_runs()):
        gpu_memory.make_room(_gpu_need(config, what)["bytes"], what, wait_seconds=START_WAIT_SECONDS)
