"""Background runs with real processes: supervisor and trainer start, report through files, stop when asked,
die and are diagnosed, resume from a whole checkpoint, queue in order, and are found again by a fresh reader."""
import json
import os
import signal
import time

import pytest

from conftest import run_cli
from phi3lora.runs import lifecycle
from phi3lora.runs import registry
from phi3lora.config import JobConfig
from phi3lora.tasks import processes, records
from phi3lora.job_builder import load_job, override

# These runs prove what the background machinery does (start, report, stop, die, resume, queue), never what the
# model learns: each step is 2 conversations of at most 128 tokens, not the demo's 8 of 512.
TINY = ["max_length=128", "per_device_train_batch_size=2", "per_device_eval_batch_size=2"]
SHORT = ["max_steps=8", "logging_steps=2", "eval_strategy=steps", "eval_steps=4", "save_strategy=steps", "save_steps=4",
         *TINY]


@pytest.fixture(autouse=True)
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return tmp_path / "home"


def _config(identity_data, *overrides):
    return override(JobConfig(), [f"data.path={identity_data}", "model.base_model=demo", *TINY,
                                  *overrides])


def _wait_until(predicate, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _launch(run_id):
    attempt = registry.latest_attempt(registry.run_dir(run_id))
    return _wait_until(lambda: records.read_record(attempt / "launch.json"), what="the trainer to start")


def test_cli_run_completes_in_the_background(identity_data, data_root):
    sets = [a for s in SHORT for a in ("--set", s)]
    done = run_cli("runs", "start", "--data", identity_data, "--model", "demo", *sets, "--json")
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["id"]
    done = run_cli("runs", "wait", run_id, "--timeout", "300", "--json")
    info = json.loads(done.stdout)
    assert done.returncode == 0 and info["status"] == "completed", info
    assert (info["step"], info["max_steps"]) == (8, 8)
    assert info["train_loss"] is not None and info["eval_loss"] is not None
    assert info["tokens_per_second"] and info["tokens_per_second"] > 0
    assert info["adapter"] and os.path.isfile(os.path.join(info["adapter"], "adapter_model.safetensors"))
    run = data_root / "runs" / run_id
    assert (run / "dataset" / identity_data.name).read_bytes() == identity_data.read_bytes()
    saved = load_job(run / "config.yaml")
    assert saved.data.path == str(run / "dataset" / identity_data.name)
    assert saved.model.base_model == "demo" and saved.training_config.learning_rate == 5e-3  # the demo's own default
    assert "train_runtime" in (run / "attempts" / "1" / "train.log").read_text()
    listed = json.loads(run_cli("runs", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [run_id] and listed[0]["status"] == "completed"
    shown = run_cli("runs", "show", run_id)
    assert "status:   completed" in shown.stdout and "log tail:" in shown.stdout


def test_cancel_stops_at_the_next_step_and_keeps_the_adapter(identity_data):
    run_id = lifecycle.start_run(_config(identity_data, "max_steps=2000", "logging_steps=1"))
    _wait_until(lambda: lifecycle.run_info(run_id).step >= 3, what="a few steps")
    assert lifecycle.cancel_run(run_id) == "running"
    info = lifecycle.wait_for_run(run_id, timeout=120)
    assert info.status == "cancelled" and "the adapter as it stood is saved" in info.reason
    assert 3 <= info.step < 2000
    assert info.adapter and (registry.run_dir(run_id) / "adapter_model.safetensors").is_file()
    with pytest.raises(lifecycle.RunStateError, match="only a queued or running run can be cancelled"):
        lifecycle.cancel_run(run_id)


def test_a_trainer_that_ignores_cancel_is_killed_after_the_grace_period(identity_data, monkeypatch):
    monkeypatch.setenv("PHI3LORA_CANCEL_GRACE", "1")
    run_id = lifecycle.start_run(_config(identity_data, "max_steps=2000"))
    trainer = _launch(run_id)["body"]
    _wait_until(lambda: lifecycle.run_info(run_id).step >= 1, what="training to begin")
    os.kill(trainer["pid"], signal.SIGSTOP)  # a hung trainer: it will never see the cancel request
    lifecycle.cancel_run(run_id)
    info = lifecycle.wait_for_run(run_id, timeout=90)
    assert info.status == "cancelled" and "did not stop within 1s" in info.reason
    assert not processes.is_alive(trainer)


def test_killed_trainer_fails_with_a_reason_and_resumes_from_its_checkpoint(identity_data):
    run_id = lifecycle.start_run(_config(identity_data, "max_steps=40", "save_strategy=steps", "save_steps=5",
                                    "eval_strategy=no", "logging_steps=1"))
    trainer = _launch(run_id)["body"]
    checkpoints = registry.run_dir(run_id) / "checkpoints"
    _wait_until(lambda: (checkpoints / "checkpoint-10" / "trainer_state.json").exists(), what="checkpoint-10")
    os.killpg(trainer["pid"], signal.SIGKILL)
    info = lifecycle.wait_for_run(run_id, timeout=60)
    assert info.status == "failed" and "killed (SIGKILL)" in info.reason, info

    lifecycle.resume_run(run_id)
    info = lifecycle.wait_for_run(run_id, timeout=300)
    assert info.status == "completed" and info.attempts == 2 and info.step == 40
    starts = [json.loads(l) for l in (registry.run_dir(run_id) / "metrics.jsonl").read_text().splitlines()]
    starts = [e["step"] for e in starts if e.get("event") == "start"]
    assert starts[0] == 0 and starts[1] >= 10  # the second attempt continued the step count
    assert "resuming from checkpoint-" in (registry.run_dir(run_id) / "attempts" / "2" / "train.log").read_text()


def test_a_run_whose_processes_vanished_is_interrupted_and_a_fresh_reader_reattaches(identity_data):
    run_id = lifecycle.start_run(_config(identity_data, "max_steps=2000", "logging_steps=1"))
    launch = _launch(run_id)
    _wait_until(lambda: lifecycle.run_info(run_id).step >= 2, what="a few steps")
    # a fresh process (as after an app restart) finds the run running, with its curve so far
    shown = json.loads(run_cli("runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "running" and shown["step"] >= 2 and shown["pid"] == launch["body"]["pid"]
    supervisor = records.read_record(registry.latest_attempt(registry.run_dir(run_id)) / "supervisor.json")
    os.killpg(supervisor["pid"], signal.SIGKILL)  # the machine "restarts": supervisor and trainer vanish
    os.killpg(launch["body"]["pid"], signal.SIGKILL)
    info = _wait_until(lambda: (i := lifecycle.run_info(run_id)).status == "interrupted" and i, what="interrupted")
    assert "resume" in info.reason


def test_runs_queue_and_start_in_order(identity_data):
    first = lifecycle.start_run(_config(identity_data, "max_steps=6", "eval_strategy=no", "save_strategy=no"))
    second = lifecycle.start_run(_config(identity_data, "max_steps=6", "eval_strategy=no", "save_strategy=no"))
    _launch(first)
    assert lifecycle.run_info(second).status == "queued"
    assert lifecycle.wait_for_run(second, timeout=300).status == "completed"
    first_end = records.read_record(registry.latest_attempt(registry.run_dir(first)) / "exit.json")["finished_at"]
    second_start = records.read_record(registry.latest_attempt(registry.run_dir(second)) / "launch.json")["launched_at"]
    assert second_start >= first_end - 1.0  # started only once the first had finished


def test_a_trainer_error_is_the_failure_reason(identity_data, tmp_path):
    run_id = lifecycle.start_run(_config(identity_data, f"model.base_model={tmp_path / 'no-such-model'}"))
    info = lifecycle.wait_for_run(run_id, timeout=120)
    assert info.status == "failed" and "cannot load" in info.reason and "no-such-model" in info.reason


def test_a_cancel_while_queued_never_starts(identity_data):
    first = lifecycle.start_run(_config(identity_data, "max_steps=2000"))
    second = lifecycle.start_run(_config(identity_data, "max_steps=6"))
    _launch(first)
    assert lifecycle.cancel_run(second) == "queued"
    info = lifecycle.wait_for_run(second, timeout=30)
    assert info.status == "cancelled" and info.reason == "cancelled before it started"
    lifecycle.cancel_run(first)
    assert lifecycle.wait_for_run(first, timeout=120).status == "cancelled"
    lifecycle.delete_run(second)
    with pytest.raises(registry.RunNotFound):
        lifecycle.run_info(second)


def test_bad_requests_are_refused_plainly(identity_data, tmp_path):
    for bad in ("../../etc", "20261123-170102-zzzzzz", ""):
        with pytest.raises(registry.RunNotFound):
            registry.run_dir(bad)
    done = run_cli("runs", "show", "../secret")
    assert done.returncode == 1 and "is not a run id" in done.stderr and "Traceback" not in done.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "", "output": ""}\n')
    with pytest.raises(lifecycle.UserError, match="--drop-invalid"):
        lifecycle.start_run(_config(identity_data, f"data.path={broken}"))
    assert not (registry.runs_root()).exists() or not list(registry.runs_root().iterdir())  # nothing half-created
