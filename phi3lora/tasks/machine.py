"""One machine for every background task (training, evaluation, export): queue it, start it, watch it, cancel it,
reattach to it, and say how it ended, all through write-once records in the task's folder (records.py).

Every task has two processes, so the caller (the app, the CLI) can go away and come back, and a body that dies
still gets a final word:
    the supervisor  `python -m phi3lora.tasks FOLDER`, its own session: waits for a GPU slot when its kind needs
                    one, starts the body, passes on a cancel (killing the body after a grace period), and writes
                    exit.json when the body ends, however it ends;
    the body        `python -m phi3lora.tasks FOLDER --body` (under `accelerate launch` on several processes), its own
                    process group: runs the kind's function (kinds.py) and writes outcome.json.

A task folder:
    queued.json      the request: kind, queued_at and the kind's arguments (caller)
    supervisor.json  pid + start time of the supervisor (caller)
    supervisor.log   the supervisor's own output
    launch.json      pid + start time of the body, its command, GPU set and process count (supervisor)
    <kind>.log       the body's stdout and stderr (train.log, evaluate.log, export.log)
    cancel.json      a cancel request (caller)
    outcome.json     how the work ended, as the body saw it (body)
    exit.json        the final word: status, reason, exit code (supervisor)

A request may carry "gpu" (tasks/gpu_memory.py gpu_request): the body then asks the GPU's owner for that much
room before its work starts (an idle chat model lets go) and holds it in the owner's ledger until it ends.

Statuses, the same for every kind: queued, running, completed, failed, cancelled, interrupted (its processes
vanished without a final word: the machine or the app restarted).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .. import settings
from ..errors import UserError
from . import failures, gpu_memory, launch, queue
from .kinds import KINDS, Kind
from .processes import is_alive, kill_process_tree, process_identity, start_detached
from .records import is_recent, log_tail, read_record, write_record

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE = (QUEUED, RUNNING)
FINISHED = (COMPLETED, FAILED, CANCELLED, INTERRUPTED)
POLL_SECONDS = 0.5
STARTING_GRACE_SECONDS = 30.0  # between queued.json and supervisor.json a task counts as starting, not lost


@dataclass(frozen=True)
class TaskState:
    status: str
    reason: str | None = None


class TaskStateError(UserError, RuntimeError):
    """The task is not in a state that allows this (e.g. cancelling a finished one)."""


def cancel_grace_seconds() -> float:
    """How long a cancelled body may take to stop before its process group is killed. $PHI3LORA_CANCEL_GRACE."""
    return settings.get_float("PHI3LORA_CANCEL_GRACE")


# --- what a caller does -----------------------------------------------------------------------------------------

def submit(folder: Path, kind: str, **request: Any) -> None:
    """Queue a task of `kind` in `folder` (created; it must hold no task yet) and start its supervisor."""
    write_record(folder / "queued.json", {"kind": KINDS[kind].name, "queued_at": time.time(), **request})
    if KINDS[kind].gpu_queue:
        queue.enter(folder)
    supervisor = start_detached([sys.executable, "-m", "phi3lora.tasks", str(folder)], folder / "supervisor.log")
    write_record(folder / "supervisor.json", process_identity(supervisor.pid))


def state(folder: Path) -> TaskState | None:
    """The task's status and, once it has ended otherwise than completed, why; None when the folder holds no task."""
    request = read_record(folder / "queued.json")
    final = read_record(folder / "exit.json")
    if final:
        return TaskState(final["status"], final.get("reason"))
    supervisor = read_record(folder / "supervisor.json")
    if is_alive(supervisor):
        return TaskState(RUNNING if (folder / "launch.json").exists() else QUEUED)
    if supervisor is None and is_recent(folder / "queued.json", STARTING_GRACE_SECONDS):
        return TaskState(QUEUED)  # the caller is starting the supervisor this very moment
    if request is None and not (folder / "queued.json").exists():
        return None
    kind = KINDS.get((request or {}).get("kind"))
    last_error = failures.last_error(log_tail(folder / kind.log_name, 20000)) if kind else None
    return TaskState(INTERRUPTED, "its process is gone (the machine or the app restarted while it ran)"
                     + (f"; its log ends with: {last_error}" if last_error else "")
                     + f": {kind.retry if kind else 'start it again'}")


def status(folder: Path) -> str | None:
    found = state(folder)
    return found.status if found else None


def cancel(folder: Path) -> str:
    """Ask a queued or running task to stop; returns the status it had. A running body is killed if it has not
    stopped within the grace period."""
    current = status(folder)
    if current not in ACTIVE:
        raise TaskStateError(f"it is {current}: only a queued or running task can be cancelled")
    if not (folder / "cancel.json").exists():
        write_record(folder / "cancel.json", {"requested_at": time.time()})
    return current


def wait(folder: Path, timeout: float | None = None) -> TaskState | None:
    """Block until the task has finished (or the timeout passes); returns its state either way."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        found = state(folder)
        if found is None or found.status in FINISHED or (deadline is not None and time.monotonic() >= deadline):
            return found
        time.sleep(POLL_SECONDS)


@contextmanager
def inline(folder: Path, kind: str, **request: Any) -> Iterator[None]:
    """Run a task's work in this very process (`with inline(...): work()`), with the same records and failure
    sentences as in the background: a reader cannot tell the two apart."""
    me = process_identity(os.getpid())
    write_record(folder / "queued.json", {"kind": KINDS[kind].name, "queued_at": time.time(), **request})
    write_record(folder / "supervisor.json", me)
    write_record(folder / "launch.json", {"body": me, "command": None, "gpus": None, "launched_at": time.time()})
    try:
        yield
    except BaseException as error:
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else failures.from_error(error, KINDS[kind].retry)
        _final(folder, FAILED, reason, None)
        raise
    _final(folder, COMPLETED, None, 0)


# --- the supervisor ---------------------------------------------------------------------------------------------

def supervise(folder: Path) -> int:
    """Body of the supervisor process: wait for a slot, run the body, record how it ended."""
    request = read_record(folder / "queued.json")
    kind = KINDS[request["kind"]]
    try:
        body = _wait_for_turn_and_launch(folder, kind, request)
        if body is None:
            _final(folder, CANCELLED, "cancelled before it started", None)
            return 0
        killed_after_grace = _watch(body, folder)
        _final(folder, *_ending(folder, kind, body.returncode, killed_after_grace), body.returncode)
    finally:
        if kind.gpu_queue:
            queue.leave(folder)
    return 0


def body_command(folder: Path, kind: Kind, request: dict[str, Any], gpu_count: int) -> list[str]:
    """`python -m phi3lora.tasks FOLDER --body`, under `accelerate launch` when a multi-process kind gets several
    processes (one per visible GPU, or the request's `processes`, on a CPU too) or an accelerate config file, so
    multi-GPU and multi-node training is accelerate's (DDP, FSDP or DeepSpeed ZeRO, from the request)."""
    body = ["-m", "phi3lora.tasks", str(folder), "--body"]
    if not kind.multi_gpu:
        return [sys.executable, *body]
    launcher = launch.launcher_command(request.get("processes"), request.get("distributed", "ddp"), gpu_count,
                                       request.get("accelerate_config"))
    return [*launcher, *body] if launcher else [sys.executable, *body]


def _wait_for_turn_and_launch(folder: Path, kind: Kind, request: dict[str, Any]) -> subprocess.Popen | None:
    if not kind.gpu_queue:
        return None if (folder / "cancel.json").exists() else _launch(folder, kind, request, "none")
    gpus = queue.gpu_set()
    while True:
        if (folder / "cancel.json").exists():
            return None
        with queue.turn_lock(gpus):
            if queue.my_turn(folder, gpus, status):
                return _launch(folder, kind, request, gpus)
        time.sleep(POLL_SECONDS)


def _launch(folder: Path, kind: Kind, request: dict[str, Any], gpus: str) -> subprocess.Popen:
    gpu_count = queue.gpu_count() if kind.multi_gpu else 0
    command = body_command(folder, kind, request, gpu_count)
    body = start_detached(command, folder / kind.log_name, reap=False)
    processes = launch.process_count(request.get("processes"), gpu_count) if kind.multi_gpu else 1
    write_record(folder / "launch.json", {"body": process_identity(body.pid), "command": command, "gpus": gpus,
                                          "processes": processes, "launched_at": time.time()})
    return body


def _watch(body: subprocess.Popen, folder: Path) -> bool:
    """Wait for the body. After a cancel request, give it a grace period, then kill its whole process group.
    Returns True when it had to be killed."""
    cancel_seen, grace = None, cancel_grace_seconds()
    while True:
        try:
            body.wait(timeout=POLL_SECONDS)
            return False
        except subprocess.TimeoutExpired:
            pass
        if cancel_seen is None and (folder / "cancel.json").exists():
            cancel_seen = time.monotonic()
        if cancel_seen is not None and time.monotonic() - cancel_seen > grace:
            kill_process_tree(body.pid)
            body.wait()
            return True


def _ending(folder: Path, kind: Kind, returncode: int, killed_after_grace: bool) -> tuple[str, str | None]:
    outcome = read_record(folder / "outcome.json")
    if outcome and (returncode == 0 or outcome["status"] == FAILED):
        return outcome["status"], outcome.get("reason")
    if killed_after_grace:
        return CANCELLED, (f"did not stop within {cancel_grace_seconds():.0f}s of the cancel and was killed; "
                           f"to go on, {kind.retry}")
    return FAILED, failures.from_exit(returncode, log_tail(folder / kind.log_name, 20000), kind.retry)


def _final(folder: Path, status: str, reason: str | None, returncode: int | None) -> None:
    try:
        write_record(folder / "exit.json", {"status": status, "reason": reason, "returncode": returncode,
                                            "finished_at": time.time()})
    except (FileNotFoundError, FileExistsError):
        pass  # the folder was deleted meanwhile, or the task already has its final word


# --- the body ---------------------------------------------------------------------------------------------------

def run_body(folder: Path) -> int:
    """Body of the task's work process: run the kind's function and record how it ended (rank 0 speaks for all)."""
    request = read_record(folder / "queued.json")
    kind = KINDS[request["kind"]]
    if request.get("needs_bitsandbytes") is False:
        leave_out_bitsandbytes()
    try:
        with _holding_the_gpu(request.get("gpu")):
            ending = kind.load_body()(folder, request) or (COMPLETED, None)
    except BaseException as error:
        if not isinstance(error, UserError):
            import traceback

            traceback.print_exc()
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else failures.from_error(error, kind.retry)
        _outcome(folder, FAILED, reason)
        print(f"error: {reason}", file=sys.stderr, flush=True)
        return 1
    _outcome(folder, *ending)
    return 0


def leave_out_bitsandbytes() -> None:
    """Keep bitsandbytes out of a process that needs neither 4-bit weights nor an 8-bit optimizer. peft and
    transformers import it whenever it is installed, and its CPU backend imports torch._inductor: 2-4 s of CPU
    at every task's start. A None in sys.modules makes importlib.util.find_spec answer None, so both libraries
    take it for not installed; it must happen before either is imported."""
    sys.modules.setdefault("bitsandbytes", None)


@contextmanager
def _holding_the_gpu(need: dict[str, Any] | None) -> Iterator[None]:
    """A request's "gpu" entry (gpu_memory.gpu_request): ask the GPU's owner for room (an idle chat model lets go),
    then hold it in the ledger while the body runs. Under accelerate, local rank 0 asks for its machine."""
    if not need or int(os.environ.get("LOCAL_RANK", "0")) != 0:
        yield
        return
    with gpu_memory.claim(need):
        yield


def _outcome(folder: Path, status: str, reason: str | None) -> None:
    if launch.is_main_rank():  # under accelerate, one rank speaks for all
        write_record(folder / "outcome.json", {"status": status, "reason": reason, "finished_at": time.time()})
