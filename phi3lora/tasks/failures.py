"""Why a task failed, in one plain sentence, the same for every kind of task: from the exception its body raised,
or, when the body died without saying, from its exit code and the end of its log."""
from __future__ import annotations

import errno
import os
import re
import signal

from ..errors import UserError

OOM_HINT = ("load the base in 4 bits (QLoRA), lower the batch size or max_length, turn gradient_checkpointing on, "
            "or stop other work on the GPU")
# the last: torch's CPU allocator refusing (RAM or an address-space limit), raised as a plain RuntimeError
OUT_OF_MEMORY = re.compile(r"OutOfMemoryError|CUDA out of memory|CUBLAS_STATUS_ALLOC_FAILED"
                           r"|DefaultCPUAllocator: (?:can't allocate|not enough) memory")
DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded|File too large")  # ENOSPC, EDQUOT, EFBIG
DISK_FULL_HINT = "free some space"
ERROR_LINE = re.compile(r"^(?:error: .+|\w+(?:Error|Exception): .+)$", re.MULTILINE)


class TaskFailed(UserError, RuntimeError):
    """Raised by a task's body with the sentence that explains its failure (e.g. which checkpoint the full disk
    broke): recorded as it is."""


def out_of_memory(detail: str, retry: str) -> str:
    """The sentence for an out-of-memory failure; it names whatever else held the GPU then (gpu_memory.py)."""
    from .gpu_memory import others_text  # here: the ledger is read only when a task ran out of memory

    try:
        others = others_text(exclude_pid=os.getpid())
    except (OSError, KeyError, TypeError):  # a sentence about the failure must not fail itself
        others = ""
    held = f"; the GPU was also held by {others}" if others else ""
    return f"out of memory ({detail[:200]}){held}: {OOM_HINT}; then {retry}"


def disk_full(cause: str, what: str, retry: str) -> str:
    return f"the disk is full ({cause}): {what}; {DISK_FULL_HINT}, then {retry}"


def disk_full_cause(error: BaseException) -> str | None:
    """ENOSPC, EDQUOT or EFBIG's text when `error` is a full disk (safetensors and torch.save say it only in
    their message), else None."""
    if found := DISK_FULL.search(str(error)):
        return found.group(0)
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return os.strerror(error.errno)
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """torch's CUDA or CPU allocator refusing, or Python's MemoryError; told by name and text, without torch."""
    return isinstance(error, MemoryError) or bool(OUT_OF_MEMORY.search(f"{type(error).__name__}: {error}"))


def from_error(error: BaseException, retry: str) -> str:
    """The reason a body's exception gives. `retry` says what to do once the cause is fixed ("resume the run")."""
    if isinstance(error, UserError):
        return str(error)
    first_line = (str(error).splitlines() or [""])[0]
    if is_out_of_memory(error):
        return out_of_memory(first_line or type(error).__name__, retry)
    if cause := disk_full_cause(error):
        return disk_full(cause, "a file could not be written", retry)
    return f"{type(error).__name__}: {first_line}"


def from_exit(returncode: int | None, log: str, retry: str) -> str:
    """Why a body that left no outcome ended, from its exit code and the end of its log."""
    if found := OUT_OF_MEMORY.search(log):
        return out_of_memory(found.group(0), retry)
    if cause := DISK_FULL.search(log):
        return disk_full(cause.group(0), "the task could not write its files", retry)
    if returncode == -signal.SIGKILL or returncode == 128 + signal.SIGKILL:
        return ("killed (SIGKILL): often the machine ran out of RAM and the kernel stopped the biggest process; "
                f"{retry}")
    if returncode is not None and returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}; {retry}"
    errors = ERROR_LINE.findall(log)
    return errors[-1] if errors else f"its process exited with code {returncode}"


def last_error(log: str) -> str | None:
    errors = ERROR_LINE.findall(log)
    return errors[-1] if errors else None
