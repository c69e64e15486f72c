"""The registry's building blocks, without training: records, process identity, incremental reading,
checkpoint validation, failure messages and the multi-GPU launch command."""
import os
import subprocess
import sys

import pytest

from phi3lora import jobs, runs
from phi3lora.training import checkpoint_problem, latest_valid_checkpoint


def test_records_are_written_once_and_partial_ones_are_not_read(tmp_path):
    path = tmp_path / "a" / "status.json"
    runs.write_record(path, {"status": "running"})
    assert runs.read_record(path) == {"status": "running"}
    with pytest.raises(FileExistsError):
        runs.write_record(path, {"status": "completed"})
    partial = tmp_path / "partial.json"
    partial.write_text('{"status": "compl')
    assert runs.read_record(partial) is None
    assert runs.read_record(tmp_path / "missing.json") is None


def test_a_reused_pid_is_not_taken_for_the_run():
    me = runs.process_identity(os.getpid())
    assert runs.is_alive(me)
    assert not runs.is_alive({**me, "started": me["started"] - 100})  # same pid, another process's start time
    assert runs.is_alive({**me, "host": "another-machine"})  # cannot check there: trusted
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = runs.process_identity(child.pid)
    child.wait()
    assert not runs.is_alive(identity)


def test_metrics_are_read_incrementally(tmp_path):
    path = tmp_path / "metrics.jsonl"
    reader = runs.MetricsReader(path)
    assert reader.update() == []
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # the second line is still being written
    assert reader.update() == [{"step": 1, "loss": 2.0}]
    offset = reader.offset
    with path.open("a") as f:
        f.write('ss": 1.5}\n')
    assert reader.update() == [{"step": 2, "loss": 1.5}]
    assert reader.offset > offset and reader.update() == []
    progress = runs.Progress()
    for event in reader.events + [{"event": "start", "step": 1, "elapsed": 0}, {"step": 3, "eval_loss": 1.0, "elapsed": 4}]:
        progress.add(event)
    assert progress.train_curve == [(1, 2.0), (2, 1.5)] and progress.eval_curve == [(3, 1.0)]


def test_log_tail_reads_only_the_end(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("".join(f"line {i}\n" for i in range(10000)) + " 10%|#  \r 20%|##  \r 30%|###")
    tail = runs.log_tail(log, max_bytes=200)
    assert tail.endswith(" 30%|###") and "line 9999" in tail and "line 1\n" not in tail


def _fake_checkpoint(folder, step, corrupt=None):
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"a.lora_A.weight": torch.ones(2, 2)}, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text("{}")
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    torch.save({"state": torch.zeros(50)}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    if corrupt:
        data = (folder / corrupt).read_bytes()
        (folder / corrupt).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("corrupt", ["optimizer.pt", "adapter_model.safetensors", "scheduler.pt"])
def test_a_truncated_checkpoint_is_skipped(tmp_path, corrupt):
    _fake_checkpoint(tmp_path / "checkpoint-5", 5)
    _fake_checkpoint(tmp_path / "checkpoint-10", 10, corrupt=corrupt)
    assert checkpoint_problem(tmp_path / "checkpoint-10") is not None
    notes = []
    assert latest_valid_checkpoint(tmp_path, notes.append) == tmp_path / "checkpoint-5"
    assert notes and "skipping checkpoint-10" in notes[0]


def test_a_checkpoint_missing_a_file_is_skipped(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint-3", 3)
    (tmp_path / "checkpoint-3" / "scheduler.pt").unlink()
    assert checkpoint_problem(tmp_path / "checkpoint-3") == "scheduler.pt is missing"
    assert latest_valid_checkpoint(tmp_path, lambda _: None) is None


@pytest.mark.parametrize(
    "returncode, log, fragment",
    [
        (1, "Traceback...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out of GPU memory"),
        (-9, "step 3", "killed (SIGKILL)"),
        (137, "", "killed (SIGKILL)"),
        (-15, "", "killed by signal SIGTERM"),
        (1, "Traceback (most recent call last):\n  ...\nValueError: bad thing happened\n", "ValueError: bad thing happened"),
        (1, "error: cannot load base model 'x': nope", "error: cannot load base model"),
        (3, "", "exited with code 3"),
    ],
)
def test_failures_are_explained(returncode, log, fragment):
    message = jobs.explain_failure(returncode, log)
    assert fragment in message
    if "memory" in fragment:
        assert "per_device_train_batch_size" in message  # a hint of what to do


def test_several_gpus_launch_through_accelerate(tmp_path):
    one = jobs.trainer_command(tmp_path, tmp_path / "attempts" / "1", False, 1)
    assert one[:4] == [sys.executable, "-m", "phi3lora", "train"]
    many = jobs.trainer_command(tmp_path, tmp_path / "attempts" / "1", True, 4, "fsdp")
    assert many[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert many[3:6] == ["--use_fsdp", "--num_processes", "4"] and many[6:9] == ["-m", "phi3lora", "train"]
    assert many[-1] == "--resume"
    zero3 = jobs.trainer_command(tmp_path, tmp_path, False, 2, "deepspeed_zero3")
    assert ["--use_deepspeed", "--zero_stage", "3"] == zero3[3:6]
    assert "--multi_gpu" in jobs.trainer_command(tmp_path, tmp_path, False, 2, "ddp")
    # the launcher module really is runnable as written
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--num_processes" in done.stdout
