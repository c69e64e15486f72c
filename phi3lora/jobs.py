"""Background training runs: start, queue, watch, cancel, resume, wait, delete. The app and the CLI call these.

Each attempt at a run has three processes:
    the caller (app or CLI)  writes the request and starts a supervisor, then returns at once;
    the supervisor           (`python -m phi3lora runs supervise ID N`, its own session) waits for a free
                             GPU slot, starts the trainer, watches it, and writes the attempt's final word;
    the trainer              (`python -m phi3lora train ...`, its own process group, output to train.log;
                             `accelerate launch ...` when several GPUs are visible) trains and reports
                             through files (see runs.py).
So the caller can go away and come back (page reload, app restart) and find the run where it is.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from . import data, limits, runs, settings
from .config import JobConfig
from .allowed_models import remote_code_allowed
from .errors import UserError
from .runs import CANCELLED, COMPLETED, FAILED, FINISHED, QUEUED, RUNNING, read_record, write_record

POLL_SECONDS = 0.5


class RunStateError(UserError, RuntimeError):
    """The run is not in a state that allows this (e.g. resuming a running run)."""


def max_concurrent_runs() -> int:
    """Training runs at once on one GPU set; later ones wait in the queue. $PHI3LORA_MAX_RUNS, default 1."""
    return settings.get_int("PHI3LORA_MAX_RUNS")


def cancel_grace_seconds() -> float:
    """How long a cancelled trainer may take to stop before its process group is killed. $PHI3LORA_CANCEL_GRACE."""
    return settings.get_float("PHI3LORA_CANCEL_GRACE")


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

    def to_dict(self) -> dict:
        return asdict(self)


def run_info(run_id: str, progress: runs.Progress | None = None) -> RunInfo:
    """A run's status and latest figures. Pass the Progress a watcher keeps to avoid re-reading metrics."""
    path = runs.run_dir(run_id)
    meta = read_record(path / "run.json")
    if meta is None:
        raise runs.RunNotFound(f"run {run_id} is being created")
    attempt = runs.latest_attempt(path)
    status, reason = runs.attempt_status(attempt) if attempt else (runs.INTERRUPTED, "never queued")
    launch = read_record(attempt / "launch.json") if attempt else None
    if progress is None:
        progress = runs.Progress()
        reader = runs.MetricsReader(path / "metrics.jsonl")
        for event in reader.update():
            progress.add(event)
    adapter = path / "adapter_model.safetensors"
    return RunInfo(
        id=run_id, status=status, reason=reason, method=meta["method"], base_model=meta["base_model"],
        dataset=meta["dataset"], created_at=meta["created_at"], attempts=len(runs.attempt_dirs(path)),
        pid=launch["trainer"]["pid"] if launch and status == RUNNING else None,
        step=progress.step, max_steps=progress.max_steps, epoch=progress.epoch,
        train_loss=progress.train_loss, eval_loss=progress.eval_loss, learning_rate=progress.learning_rate,
        tokens_per_second=progress.tokens_per_second, peak_gpu_memory_gb=progress.peak_gpu_memory_gb,
        elapsed=progress.elapsed, eta_seconds=progress.eta_seconds if status == RUNNING else None,
        adapter=str(path) if adapter.is_file() and status in FINISHED else None, path=str(path),
    )


def list_runs() -> list[RunInfo]:
    root = runs.runs_root()
    ids = sorted((p.name for p in root.iterdir() if runs.RUN_ID.match(p.name)), reverse=True) if root.is_dir() else []
    infos = []
    for run_id in ids:
        try:
            infos.append(run_info(run_id))
        except runs.RunNotFound:
            continue  # a run being created or deleted right now
    return infos


def log_tail(run_id: str, max_bytes: int = 4000) -> str:
    attempt = runs.latest_attempt(runs.run_dir(run_id))
    return runs.log_tail(attempt / "train.log", max_bytes) if attempt else ""


# --- start, cancel, resume, wait, delete ------------------------------------------------------------------

def start_run(config: JobConfig, owner: str | None = None) -> str:
    """Check the dataset, snapshot it into a new run folder, and queue the run. Returns the run id.
    `owner` (who started it, see access.py) is recorded with the run."""
    if not config.data.path:
        raise UserError("no dataset: set data.path (--data)")
    dataset = data.read_dataset(config.data.path, config.data.format)
    data.usable_conversations(dataset, drop_invalid=config.data.drop_invalid)  # refuse bad data now, not in a failed run
    from .modeling import resolve_job  # here, not at the top: the supervisor process needs neither torch nor transformers

    config, _ = resolve_job(config)  # the YAML holds every setting the run will use, model defaults included
    _check_limits(config, owner)  # the record limit: read_dataset stops reading past it

    run_id = runs.new_run_id()
    path = runs.runs_root() / run_id
    snapshot = path / "dataset" / Path(config.data.path).name
    snapshot.parent.mkdir(parents=True)
    shutil.copyfile(config.data.path, snapshot)
    config.data.path = str(snapshot)
    (path / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    write_record(path / "run.json", {
        "id": run_id, "created_at": time.time(), "method": config.method,
        "base_model": config.model.base_model, "dataset": snapshot.name, "owner": owner,
    })
    _queue_attempt(path, resume=False)
    return run_id


def _check_limits(config: JobConfig, owner: str | None) -> None:
    """The operator's limits (limits.py) and the remote-code switch; each refusal names what it enforces."""
    training = config.training_config
    limits.check("PHI3LORA_MAX_SEQ_LENGTH", training.max_length, "training_config.max_length")
    limits.check("PHI3LORA_MAX_STEPS", training.max_steps, "training_config.max_steps")
    limits.check("PHI3LORA_MAX_EPOCHS", training.num_train_epochs, "training_config.num_train_epochs")
    if owner is not None:
        active = sum(1 for info in list_runs() if info.status in (QUEUED, RUNNING) and _owner(info.id) == owner)
        limits.check("PHI3LORA_MAX_QUEUED_PER_USER", active + 1, "your number of queued and running runs")
    if config.model.trust_remote_code and not remote_code_allowed():
        raise UserError("model.trust_remote_code: this server does not run code from model repositories "
                        "(its owner can allow it with PHI3LORA_ALLOW_REMOTE_CODE=1)")


def _owner(run_id: str) -> str | None:
    return (read_record(runs.run_dir(run_id) / "run.json") or {}).get("owner")


def cancel_run(run_id: str) -> str:
    """Ask a queued or running run to stop. Training stops at its next step and saves the adapter as it stands."""
    path = runs.run_dir(run_id)
    attempt = runs.latest_attempt(path)
    status, _ = runs.attempt_status(attempt) if attempt else (None, None)
    if status not in (QUEUED, RUNNING):
        raise RunStateError(f"run {run_id} is {status}: only a queued or running run can be cancelled")
    if not (attempt / "cancel.json").exists():
        write_record(attempt / "cancel.json", {"requested_at": time.time()})
    return status


def resume_run(run_id: str) -> None:
    """Queue a new attempt that continues from the newest whole checkpoint."""
    path = runs.run_dir(run_id)
    status = runs.current_status(path) or runs.INTERRUPTED  # never queued: as good as interrupted
    if status not in (FAILED, CANCELLED, runs.INTERRUPTED):
        raise RunStateError(f"run {run_id} is {status}: only a failed, cancelled or interrupted run can be resumed")
    _refuse_while_reading_the_adapter(run_id, "resumed")
    _queue_attempt(path, resume=True)


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
    path = runs.run_dir(run_id)
    status = runs.current_status(path)
    if status in (QUEUED, RUNNING):
        raise RunStateError(f"run {run_id} is {status}: cancel it first")
    _refuse_while_reading_the_adapter(run_id, "deleted")
    shutil.rmtree(path)


def _refuse_while_reading_the_adapter(run_id: str, what: str) -> None:
    """A merge and an evaluation read the adapter: it must not change or vanish underneath them."""
    from .evaluation import evaluation_status
    from .export import export_status

    if any(export["status"] == RUNNING for export in export_status(run_id)):
        raise RunStateError(f"run {run_id} is being exported: it can be {what} once the export has finished")
    if evaluation_status(run_id)["status"] == RUNNING:
        raise RunStateError(f"run {run_id} is being evaluated: it can be {what} once the evaluation has finished")


class RunWatcher:
    """Follows one run cheaply: metrics are read incrementally, the status from a few small records."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.reader = runs.MetricsReader(runs.run_dir(run_id) / "metrics.jsonl")
        self.progress = runs.Progress()

    def info(self) -> RunInfo:
        for event in self.reader.update():
            self.progress.add(event)
        return run_info(self.run_id, self.progress)


# --- the supervisor -----------------------------------------------------------------------------------------

def _queue_attempt(path: Path, resume: bool) -> Path:
    attempt = path / "attempts" / str(len(runs.attempt_dirs(path)) + 1)
    write_record(attempt / "queued.json", {"queued_at": time.time(), "resume": resume})
    supervisor = runs.start_detached([sys.executable, "-m", "phi3lora", "runs", "supervise", path.name, attempt.name],
                                     attempt / "supervisor.log")
    write_record(attempt / "supervisor.json", supervisor)
    return attempt


def supervise(run_id: str, attempt_name: str) -> int:
    """Body of the supervisor process: wait for a slot, run the trainer, record how it ended."""
    path = runs.run_dir(run_id)
    attempt = path / "attempts" / attempt_name
    resume = read_record(attempt / "queued.json")["resume"]
    trainer = _wait_for_slot_and_launch(path, attempt, resume)
    if trainer is None:
        write_record(attempt / "exit.json", {"status": CANCELLED, "reason": "cancelled before it started",
                                             "returncode": None, "finished_at": time.time()})
        return 0
    killed_after_grace = _watch(trainer, attempt)
    status, reason = _final_status(attempt, trainer.returncode, killed_after_grace)
    write_record(attempt / "exit.json", {"status": status, "reason": reason, "returncode": trainer.returncode,
                                         "finished_at": time.time()})
    return 0


def _wait_for_slot_and_launch(path: Path, attempt: Path, resume: bool) -> subprocess.Popen | None:
    gpus = _gpu_set()
    while True:
        if (attempt / "cancel.json").exists():
            return None
        with _queue_lock(gpus):
            if _my_turn(path.name, attempt, gpus):
                return _launch_trainer(path, attempt, resume, gpus)
        time.sleep(POLL_SECONDS)


def _my_turn(run_id: str, attempt: Path, gpus: str) -> bool:
    """First in line among queued attempts, and a slot free on this GPU set (FIFO by queue time)."""
    queued, running = [], 0
    for other in runs.runs_root().iterdir():
        latest = runs.latest_attempt(other) if runs.RUN_ID.match(other.name) else None
        if latest is None:
            continue
        status, _ = runs.attempt_status(latest)
        if status == QUEUED:
            queued.append((read_record(latest / "queued.json")["queued_at"], other.name))
        elif status == RUNNING and (read_record(latest / "launch.json") or {}).get("gpus") == gpus:
            running += 1
    return running < max_concurrent_runs() and min(queued, default=(0, run_id))[1] == run_id


@contextmanager
def _queue_lock(gpus: str):
    """A lock on a *local* file: GPUs belong to one machine, and flock is reliable on local disks (unlike
    on network mounts, where the registry itself lives)."""
    key = hashlib.sha256(f"{runs.data_root()}|{gpus}".encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"phi3lora-queue-{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gpu_set() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return visible or "cpu"
    return "all" if _gpu_count() else "cpu"


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def trainer_command(path: Path, attempt: Path, resume: bool, gpu_count: int, distributed: str = "ddp") -> list[str]:
    """`python -m phi3lora train ...`, or the same under `accelerate launch` when there are several GPUs, so
    multi-GPU and multi-node training is accelerate's (DDP, FSDP or DeepSpeed ZeRO, from the config)."""
    train = ["-m", "phi3lora", "train", "--config", str(path / "config.yaml"), "--output", str(path),
             "--attempt-dir", str(attempt)] + (["--resume"] if resume else [])
    if gpu_count <= 1:
        return [sys.executable, *train]
    strategy = {
        "ddp": ["--multi_gpu"],
        "fsdp": ["--use_fsdp"],
        "deepspeed_zero2": ["--use_deepspeed", "--zero_stage", "2"],
        "deepspeed_zero3": ["--use_deepspeed", "--zero_stage", "3"],
    }[distributed]
    return [sys.executable, "-m", "accelerate.commands.launch", *strategy, "--num_processes", str(gpu_count), *train]


def _launch_trainer(path: Path, attempt: Path, resume: bool, gpus: str) -> subprocess.Popen:
    distributed = JobConfig.from_yaml(path / "config.yaml").training_config.distributed
    command = trainer_command(path, attempt, resume, _gpu_count(), distributed)
    with open(attempt / "train.log", "ab") as log:  # a file, never a pipe: a full pipe would hang the trainer
        trainer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its own process group, killed as a whole
    write_record(attempt / "launch.json", {"trainer": runs.process_identity(trainer.pid), "command": command,
                                           "gpus": gpus, "launched_at": time.time()})
    return trainer


def _watch(trainer: subprocess.Popen, attempt: Path) -> bool:
    """Wait for the trainer. After a cancel request, give it a grace period, then kill its whole tree.
    Returns True when it had to be killed."""
    cancel_seen, grace = None, cancel_grace_seconds()
    while True:
        try:
            trainer.wait(timeout=POLL_SECONDS)
            return False
        except subprocess.TimeoutExpired:
            pass
        if cancel_seen is None and (attempt / "cancel.json").exists():
            cancel_seen = time.monotonic()
        if cancel_seen is not None and time.monotonic() - cancel_seen > grace:
            kill_process_tree(trainer.pid)
            trainer.wait()
            return True


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


def _final_status(attempt: Path, returncode: int, killed_after_grace: bool) -> tuple[str, str | None]:
    outcome = read_record(attempt / "outcome.json")
    if outcome and (returncode == 0 or outcome["status"] == FAILED):
        return outcome["status"], outcome.get("reason")
    if killed_after_grace:
        return CANCELLED, f"did not stop within {cancel_grace_seconds():.0f}s of the cancel; killed (resume keeps its last checkpoint)"
    return FAILED, explain_failure(returncode, runs.log_tail(attempt / "train.log", 20000))


OOM_HINT = ("lower per_device_train_batch_size or max_length, turn gradient_checkpointing on, or use QLoRA "
            "(4-bit); then resume the run")
DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded|File too large")  # ENOSPC, EDQUOT, EFBIG
DISK_FULL_HINT = "free some space, then resume the run: it continues from its last whole checkpoint"


def explain_failure(returncode: int, log: str) -> str:
    """One plain sentence on why a trainer died, from its exit code and the end of its log."""
    if re.search(r"OutOfMemoryError|CUDA out of memory|CUBLAS_STATUS_ALLOC_FAILED", log):
        return f"out of GPU memory: {OOM_HINT}"
    if disk_full := DISK_FULL.search(log):
        return f"the disk is full ({disk_full.group(0)}): the trainer could not write its files; {DISK_FULL_HINT}"
    if returncode == -signal.SIGKILL or returncode == 128 + signal.SIGKILL:
        return ("killed (SIGKILL): often the machine ran out of RAM and the kernel stopped the biggest process; "
                "resume continues from the last checkpoint")
    if returncode is not None and returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}; resume continues from the last checkpoint"
    errors = re.findall(r"^(?:error: .+|\w+(?:Error|Exception): .+)$", log, flags=re.MULTILINE)
    return errors[-1] if errors else f"the trainer exited with code {returncode}"


# --- inside the trainer process ----------------------------------------------------------------------------

def train_attempt(config: JobConfig, output_dir: Path, attempt: Path, resume: bool) -> int:
    """`train --attempt-dir`: train with a stop-when-cancelled callback, and record how it ended."""
    import torch

    from .callbacks import StopWhenAsked
    from .training import train

    stopper = StopWhenAsked(attempt / "cancel.json")
    try:
        _yield_cpu_to_the_app()
        result = train(config, output_dir, callbacks=[stopper], resume=resume)
    except torch.OutOfMemoryError as error:
        _outcome(attempt, FAILED, f"out of GPU memory ({str(error).splitlines()[0][:200]}): {OOM_HINT}")
        return 1
    except UserError as error:
        _outcome(attempt, FAILED, str(error))
        raise
    except Exception as error:
        _outcome(attempt, FAILED, _disk_full_reason(error, output_dir) or f"{type(error).__name__}: {error}")
        raise
    if stopper.asked:
        _outcome(attempt, CANCELLED, f"cancelled at step {result.global_step} of {result.max_steps}; "
                                     "the adapter as it stood is saved")
    else:
        _outcome(attempt, COMPLETED, None)
    return 0


def _disk_full_reason(error: Exception, output_dir: Path) -> str | None:
    """A plain sentence when `error` is a full disk (safetensors and torch.save report it only in their text),
    naming the checkpoint that was being written, if that is where it happened."""
    from .training import PREFIX_CHECKPOINT_DIR, checkpoint_problem, checkpoint_step

    found = DISK_FULL.search(str(error))
    if not found and not (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)):
        return None
    cause = found.group(0) if found else os.strerror(error.errno)
    newest = max((output_dir / "checkpoints").glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=checkpoint_step, default=None)
    if newest and checkpoint_problem(newest):
        what = f"{newest.name} could not be written in {newest.parent}"
    else:
        what = f"a file could not be written in {output_dir}"
    return f"the disk is full ({cause}): {what}; {DISK_FULL_HINT}"


def _yield_cpu_to_the_app() -> None:
    """Training on the CPU takes every core, and the web app on the same machine would answer slowly: the trainer
    lowers its own priority by $PHI3LORA_TRAINER_NICE (default 10, 0 keeps it), so it trains at full speed on
    whatever the app leaves idle. Training on a GPU barely uses the CPU, and keeps its priority."""
    import torch

    nice = settings.get_int("PHI3LORA_TRAINER_NICE")
    if not torch.cuda.is_available() and nice:
        os.nice(nice)


def _outcome(attempt: Path, status: str, reason: str | None) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # under accelerate, one rank speaks for all
        write_record(attempt / "outcome.json", {"status": status, "reason": reason, "finished_at": time.time()})
