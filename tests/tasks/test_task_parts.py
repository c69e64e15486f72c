"""The task machine's parts, without a task: write-once records, process identity, log tails, failure sentences
and the multi-GPU launch command."""
import os
import subprocess
import sys

import pytest

from phi3lora.tasks import failures, processes, records


def test_records_are_written_once_and_partial_ones_are_not_read(tmp_path):
    path = tmp_path / "a" / "status.json"
    records.write_record(path, {"status": "running"})
    assert records.read_record(path) == {"status": "running"}
    with pytest.raises(FileExistsError):
        records.write_record(path, {"status": "completed"})
    partial = tmp_path / "partial.json"
    partial.write_text('{"status": "compl')
    assert records.read_record(partial) is None
    assert records.read_record(tmp_path / "missing.json") is None


def test_a_reused_pid_is_not_taken_for_the_run():
    me = processes.process_identity(os.getpid())
    assert processes.is_alive(me)
    assert not processes.is_alive({**me, "started": me["started"] - 100})  # same pid, another process's start time
    assert processes.is_alive({**me, "host": "another-machine"})  # cannot check there: trusted
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = processes.process_identity(child.pid)
    child.wait()
    assert not processes.is_alive(identity)


def test_log_tail_reads_only_the_end(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("".join(f"line {i}\n" for i in range(10000)) + " 10%|#  \r 20%|##  \r 30%|###")
    tail = records.log_tail(log, max_bytes=200)
    assert tail.endswith(" 30%|###") and "line 9999" in tail and "line 1\n" not in tail


@pytest.mark.parametrize(
    "returncode, log, fragment",
    [
        (1, "Traceback...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out of memory"),
        (1, "RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)", "out of memory"),
        (-9, "step 3", "killed (SIGKILL)"),
        (137, "", "killed (SIGKILL)"),
        (-15, "", "killed by signal SIGTERM"),
        (1, "Traceback (most recent call last):\n  ...\nValueError: bad thing happened\n", "ValueError: bad thing happened"),
        (1, "error: cannot load base model 'x': nope", "error: cannot load base model"),
        (3, "", "exited with code 3"),
    ],
)
def test_failures_are_explained(returncode, log, fragment):
    message = failures.from_exit(returncode, log, "resume the run")
    assert fragment in message
    if "memory" in fragment:
        assert "4 bits (QLoRA)" in message and message.endswith("then resume the run")  # what to do
