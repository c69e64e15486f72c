"""Fault injection on real processes: a trainer killed again and again, a disk that fills while a checkpoint is
written, a truncated checkpoint, the app killed and restarted mid-training, and a GPU that runs out of memory
while the chat answers. Each test checks what a user sees: the run's status and reason, the resumed run
completing with its adapter, the API's answers.

The kill steps are random but seeded: the seed is printed, and PHI3LORA_FAULT_SEED=N replays a run of faults."""
import json
import os
import random
import resource
import signal
import time
from pathlib import Path

import pytest
from app_server import _stop_runs, app_server, wait_for_run
from conftest import copy_home, run_cli
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_jobs import _config, _launch, data_root  # noqa: F401 (data_root: autouse, a fresh PHI3LORA_HOME)

from phi3lora.runs import lifecycle
from phi3lora.runs import registry
from phi3lora.tasks import failures, processes, records

SAVE_STEPS = 2
# Tiny and quick: every step logged (kills are aimed at steps), a checkpoint every SAVE_STEPS, no eval.
QUICK = ["logging_steps=1", "save_strategy=steps", f"save_steps={SAVE_STEPS}", "eval_strategy=no",
         "data.eval_size=0", "max_length=128", "per_device_train_batch_size=2"]


@pytest.fixture(autouse=True)
def no_run_outlives_its_test(data_root):  # noqa: F811 (data_root: the fixture imported above)
    """Runs outlive their starter by design; a failed test's must not go on training in the background."""
    yield
    _stop_runs(data_root)


def _read_events(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines()]


def _starts(run_id: str) -> list[int]:
    """The step each attempt began at, from the trainer's own "start" events."""
    events = _read_events(registry.run_dir(run_id) / "metrics.jsonl")
    return [event["step"] for event in events if event.get("event") == "start"]


def _attempt_log(run_id: str) -> str:
    return (registry.latest_attempt(registry.run_dir(run_id)) / "train.log").read_text(errors="replace")


def _whole_checkpoints(run_id: str) -> list[int]:
    """Steps of the checkpoints holding their last file (Trainer writes trainer_state.json after everything else)."""
    folders = (registry.run_dir(run_id) / "checkpoints").glob("checkpoint-*")
    return sorted(int(folder.name.rsplit("-", 1)[1]) for folder in folders if (folder / "trainer_state.json").is_file())


def _checkpoint_folders(run_id: str) -> list[int]:
    return [int(folder.name.rsplit("-", 1)[1]) for folder in (registry.run_dir(run_id) / "checkpoints").glob("checkpoint-*")]


def _poll(predicate, timeout: float, what: str, every: float = 0.001):
    """Like test_jobs._wait_until, but fast enough to land a kill inside a checkpoint write (tens of ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class StepWatch:
    """The highest step logged with a train loss from now on, read incrementally from a run's metrics.jsonl."""

    def __init__(self, metrics: Path):
        self.reader = registry.MetricsReader(metrics)
        self.reader.update()  # what is already there (earlier attempts) is not new progress
        self.step = 0

    def update(self) -> int:
        for event in self.reader.update():
            if "loss" in event:
                self.step = max(self.step, event["step"])
        return self.step


def _kill_trainer(run_id: str, launch: dict) -> lifecycle.RunInfo:
    os.killpg(launch["body"]["pid"], signal.SIGKILL)
    return lifecycle.wait_for_run(run_id, timeout=60)


# --- a. SIGKILL at five random steps, c. a truncated checkpoint ------------------------------------------------

KILL_MAX_STEPS, KILLS = 16, 5


def test_a_trainer_killed_at_five_random_steps_resumes_each_time_and_completes(identity_data):
    """One run, SIGKILLed five times at seeded random steps, one kill landing inside a checkpoint write, and once
    its newest checkpoint truncated after the kill (fault c). Each resume must continue from the newest whole
    checkpoint, naming the ones it skips; the run completes at max_steps with every step's loss on its curve and
    an adapter that answers."""
    started = time.monotonic()
    seed = int(os.environ.get("PHI3LORA_FAULT_SEED") or random.randrange(10**6))
    rng = random.Random(seed)
    targets = sorted(rng.sample(range(1, KILL_MAX_STEPS - SAVE_STEPS), KILLS))  # kill once step >= target is logged
    mid_save = rng.randrange(KILLS)  # this kill waits for the next checkpoint to start being written
    truncate = KILLS - 1 if mid_save != KILLS - 1 else KILLS - 2  # late enough for an older whole checkpoint to exist
    plan = f"seed {seed}: kills after steps {targets}, kill #{mid_save + 1} inside a checkpoint write, " \
           f"newest checkpoint truncated after kill #{truncate + 1} (replay: PHI3LORA_FAULT_SEED={seed})"
    print(plan)
    run_id = lifecycle.start_run(_config(identity_data, f"max_steps={KILL_MAX_STEPS}", *QUICK))
    log = [_kill_and_resume(run_id, kill + 1, target, kill == mid_save, kill == truncate, plan)
           for kill, target in enumerate(targets)]

    info = lifecycle.wait_for_run(run_id, timeout=180)
    assert info.status == "completed" and info.attempts == KILLS + 1, (plan, log, info)
    assert info.step == info.max_steps == KILL_MAX_STEPS, (plan, info)
    summary = json.loads((registry.run_dir(run_id) / "summary.json").read_text())
    assert summary["global_step"] == KILL_MAX_STEPS
    watcher = lifecycle.RunWatcher(run_id)
    watcher.info()
    assert [step for step, _ in watcher.progress.train_curve] == list(range(1, KILL_MAX_STEPS + 1)), plan

    from phi3lora.inference.service import compare

    answers = compare(info.adapter, "Who are you?", max_new_tokens=8)
    assert answers["adapted"] and set(answers) == {"base", "adapted"}
    print(f"{plan}; {'; '.join(log)}; completed in {time.monotonic() - started:.0f}s")


def _kill_and_resume(run_id: str, attempt: int, target: int, mid_save: bool, truncate: bool, plan: str) -> str:
    """SIGKILL attempt `attempt` once it has logged step `target` (with `mid_save`, once the next checkpoint has
    begun to be written), optionally truncate the newest whole checkpoint, resume, and check where the next
    attempt starts and what its log says. Returns what happened, in words."""
    watch, launch = StepWatch(registry.run_dir(run_id) / "metrics.jsonl"), _launch(run_id)
    _poll(lambda: watch.update() >= target, 120, f"step {target} ({plan})", every=0.01)
    if mid_save:
        saving = (watch.step + SAVE_STEPS - 1) // SAVE_STEPS * SAVE_STEPS  # the save at this step or the next
        fresh = registry.run_dir(run_id) / "checkpoints" / f"checkpoint-{saving}" / "adapter_model.safetensors"
        _poll(lambda: fresh.is_file() and fresh.stat().st_mtime >= launch["launched_at"], 60,
              f"checkpoint-{saving} to be written ({plan})")
    info = _kill_trainer(run_id, launch)
    killed_at = watch.update()
    assert info.status == "failed" and "killed (SIGKILL)" in info.reason, (plan, info)
    whole = _whole_checkpoints(run_id)
    if mid_save:
        assert saving not in whole, f"the kill missed checkpoint-{saving}'s write ({plan})"
    if truncate:  # fault c: a checkpoint that looks whole but is cut short
        newest = registry.run_dir(run_id) / "checkpoints" / f"checkpoint-{whole.pop()}" / "adapter_model.safetensors"
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    expected = whole[-1] if whole else 0
    # every newer folder is cut short: the planned ones, and any save another kill happened to land in
    skipped = sorted(step for step in _checkpoint_folders(run_id) if step > expected)

    lifecycle.resume_run(run_id)
    _poll(lambda: len(_starts(run_id)) == attempt + 1, 120, f"attempt {attempt + 1} to start ({plan})", every=0.1)
    resumed_from = _starts(run_id)[-1]
    text = _attempt_log(run_id)
    what = f"killed at step {killed_at}, resumed from {resumed_from}" + (f" skipping {skipped}" if skipped else "")
    assert resumed_from == expected, (plan, what, text[-3000:])
    redone = killed_at - resumed_from  # steps done again: at most the checkpoint interval, twice after a truncation
    assert 0 <= redone <= SAVE_STEPS * (1 + truncate), (plan, what)
    assert (f"resuming from checkpoint-{expected}" if expected else "starting over") in text, (plan, text[-3000:])
    for step in skipped:  # named, and removed so that they cannot push whole ones out of save_total_limit
        assert f"skipping checkpoint-{step}: " in text and f"removed checkpoint-{step}" in text, (plan, text[-3000:])
    return what


# --- b. the disk fills while a checkpoint is written ------------------------------------------------------------

def test_a_disk_that_fills_during_a_checkpoint_fails_plainly_and_the_previous_checkpoint_resumes(identity_data):
    """RLIMIT_FSIZE set on the live trainer (prlimit, no root needed) makes every write past 512 KB fail with
    EFBIG, as a full disk fails with ENOSPC: the next checkpoint (1 MB of LoRA weights) cannot be written."""
    run_id = lifecycle.start_run(_config(identity_data, "max_steps=8", *QUICK))
    launch = _launch(run_id)
    _poll(lambda: _whole_checkpoints(run_id) == [SAVE_STEPS], 120, f"checkpoint-{SAVE_STEPS}", every=0.01)
    limit = 512 * 1024
    resource.prlimit(launch["body"]["pid"], resource.RLIMIT_FSIZE, (limit, limit))

    info = lifecycle.wait_for_run(run_id, timeout=120)
    assert info.status == "failed", info
    print(f"disk full: {info.reason}")
    assert info.reason.startswith("the disk is full (File too large): checkpoint-4 could not be written in "), info
    assert info.reason.endswith("resume the run: it continues from its last whole checkpoint"), info
    assert "\n" not in info.reason and "Error" not in info.reason
    shown = run_cli("runs", "show", run_id)  # what the CLI shows
    assert "the disk is full (File too large): checkpoint-4 could not be written" in shown.stdout, shown.stdout
    # the same diagnosis from the trainer's log alone, for a trainer that could not even record its outcome
    assert failures.from_exit(1, _attempt_log(run_id), "resume").startswith("the disk is full (File too large)")

    lifecycle.resume_run(run_id)
    info = lifecycle.wait_for_run(run_id, timeout=180)
    assert info.status == "completed" and info.step == info.max_steps == 8, info
    assert _starts(run_id) == [0, SAVE_STEPS]
    text = _attempt_log(run_id)
    assert "skipping checkpoint-4: " in text and "removed checkpoint-4" in text, text[-3000:]
    assert f"resuming from checkpoint-{SAVE_STEPS}" in text, text[-3000:]
    assert (registry.run_dir(run_id) / "adapter_model.safetensors").is_file() and info.adapter


# --- d. the app killed and restarted while a run trains ---------------------------------------------------------

def _api_run(max_steps: int) -> str:
    """Settings for /start_training: a tiny run, every step's loss on its curve, no checkpoints."""
    return json.dumps({"model": {"base_model": "demo"}, "data": {"eval_size": 0},
                       "training_config": {"max_steps": max_steps, "per_device_train_batch_size": 2, "max_length": 128,
                                           "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no"}})


def test_the_app_killed_mid_training_and_restarted_reattaches_to_the_running_run(tmp_path, identity_data):
    """SIGKILL of the app's process group leaves the run's own processes (their own sessions) training; a new
    app on the same data root shows it running, follows it to completion, and its loss curve has every step."""
    max_steps = 30  # steps of the short identity sample go fast: enough left to stop the run mid-way
    with app_server(tmp_path / "first") as first:
        client = Client(first.url, verbose=False)
        run_id = client.predict(handle_file(str(identity_data)), None, _api_run(max_steps), api_name="/start_training")
        before = _poll(lambda: (info := client.predict(run_id, api_name="/run_status"))["step"] >= 2 and info,
                       180, "two steps through the first app", every=0.5)
        run = first.home / "runs" / run_id
        attempt = registry.latest_attempt(run)
        trainer, supervisor = records.read_record(attempt / "launch.json")["body"], records.read_record(attempt / "supervisor.json")
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait()

        # the run trains on without any app; pause it only while the new app starts, so that however slow
        # this machine is, the new app meets the run mid-way
        watch = StepWatch(run / "metrics.jsonl")
        _poll(lambda: watch.update() >= before["step"] + 2, 60, "training to go on without the app", every=0.1)
        os.killpg(trainer["pid"], signal.SIGSTOP)
        try:
            with app_server(tmp_path / "second", PHI3LORA_HOME=str(first.home)) as second:
                client = Client(second.url, verbose=False)
                found = client.predict(run_id, api_name="/run_status")
                assert found["status"] == "running" and found["pid"] == trainer["pid"], found
                assert before["step"] + 2 <= found["step"] < max_steps and found["train_loss"] is not None, found
                os.killpg(trainer["pid"], signal.SIGCONT)
                info = wait_for_run(client, run_id, timeout=240)
                assert info["status"] == "completed" and info["step"] == info["max_steps"] == max_steps, info
                assert info["attempts"] == 1 and info["adapter"], info
                assert second.alive()
                _poll(lambda: not processes.is_alive(supervisor), 30, "the supervisor to exit", every=0.1)
        finally:
            if processes.is_alive(trainer):
                os.killpg(trainer["pid"], signal.SIGCONT)
    losses = [event["step"] for event in _read_events(run / "metrics.jsonl") if "loss" in event]
    assert losses == list(range(1, max_steps + 1))  # the curve: every step once, none lost while no app ran


# --- e. the GPU runs out of memory while the chat answers --------------------------------------------------------

OOM_PROMPT_TOKENS = 256
OOM_SHIM = f'''"""Written by tests/runs/test_faults.py onto the PYTHONPATH of one test's app: a GPU that runs out of memory
on prompts longer than {OOM_PROMPT_TOKENS} tokens, the one thing that cannot happen on this CPU."""
import torch
from transformers.models.phi3 import modeling_phi3

_forward = modeling_phi3.Phi3ForCausalLM.forward


def forward(self, input_ids=None, *args, **kwargs):
    if input_ids is not None and input_ids.shape[-1] > {OOM_PROMPT_TOKENS}:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by tests/runs/test_faults.py)")
    return _forward(self, input_ids, *args, **kwargs)


modeling_phi3.Phi3ForCausalLM.forward = forward
'''


def test_out_of_memory_while_generating_gives_a_message_and_the_server_answers_the_next_request(tmp_path,
                                                                                             finished_home):
    shim = tmp_path / "oom-shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(OOM_SHIM)
    pythonpath = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p)
    home, run_id = copy_home(finished_home, tmp_path / "home")  # a completed run: an adapter to chat with
    with app_server(tmp_path, PYTHONPATH=pythonpath, PHI3LORA_HOME=str(home)) as server:
        client = Client(server.url, verbose=False)
        assert client.predict(run_id, api_name="/run_status")["status"] == "completed"
        assert client.predict("Who are you?", run_id, "", 8, api_name="/compare")[run_id]  # the model is loaded

        with pytest.raises(AppError) as refused:
            client.predict("Tell me who you are. " * 100, run_id, "", 8, api_name="/compare")
        message = str(refused.value)
        print(f"out of memory: {message}")
        assert "Out of memory while generating: the chat model was released to free it" in message, message
        assert "4-bit" in message and "Traceback" not in message
        assert server.alive()
        answers = client.predict("Who are you?", run_id, "", 8, api_name="/compare")  # loads the model again
        assert set(answers) == {"base", run_id} and answers["base"] and answers[run_id], answers
    assert "OutOfMemoryError" not in server.log_text()  # a user's error, not a server fault with a traceback
