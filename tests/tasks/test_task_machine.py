"""Every kind of background task (training, evaluation, export) as the task machine runs it, in real processes: the
same statuses and the same failure sentences for the same causes, whichever kind it is."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phi3lora.data.samples import SAMPLES_DIR
from phi3lora.inference import evaluation
from phi3lora.deploy import export
from phi3lora.runs import lifecycle
from phi3lora.runs import registry
from phi3lora.config import JobConfig
from phi3lora.tasks import machine, processes, records
from phi3lora.tasks.failures import OOM_HINT
from phi3lora.tasks.kinds import KINDS
from phi3lora.job_builder import override

KIND_NAMES = sorted(KINDS)

# Written onto the PYTHONPATH of one test's task processes: a base model too large for the GPU, the one thing that
# cannot happen on this CPU. Every kind loads its base through from_pretrained.
OOM_SHIM = '''"""Written by tests/tasks/test_task_machine.py: from_pretrained runs out of GPU memory."""
import sys

if sys.argv[-1:] == ["--body"]:  # only a task's body: its supervisor stays as it is
    import torch
    import transformers

    def _out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by a test)")

    transformers.AutoModelForCausalLM.from_pretrained = _out_of_memory
'''


@pytest.fixture
def trained(finished_copy, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    home, run_id = finished_copy
    yield run_id
    for folder in _task_folders(home):  # tasks outlive their starter by design; a failed test's must not
        for record in ("supervisor.json", "launch.json"):
            identity = records.read_record(folder / record) or {}
            identity = identity.get("body", identity)
            if processes.is_alive(identity):
                processes.kill_process_tree(identity["pid"], term_seconds=0)


def _task_folders(home: Path) -> list[Path]:
    return [queued.parent for queued in home.glob("runs/*/**/queued.json")]


def _start(kind: str, run_id: str) -> Path:
    """Start a task of `kind` the way the app does; returns its folder."""
    if kind == "train":
        config = override(JobConfig(), [f"data.path={SAMPLES_DIR / 'identity.jsonl'}", "model.base_model=demo",
                                             "max_steps=2000", "eval_strategy=no", "save_strategy=no"])
        return registry.latest_attempt(registry.run_dir(lifecycle.start_run(config)))
    if kind == "evaluate":
        evaluation.start_evaluation(run_id, samples=1, max_new_tokens=4)
        return evaluation.evaluation_dir(run_id)
    return export.exports_dir(run_id) / export.start_export(run_id)


def _wait_for(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_each_kind_killed_with_its_processes_is_interrupted_and_says_what_to_do(trained):
    folders = {kind: _start(kind, trained) for kind in KIND_NAMES}
    for kind, folder in folders.items():
        launch = _wait_for(lambda: records.read_record(folder / "launch.json"), f"the {kind} body to start")
        assert machine.status(folder) == "running"
        # the machine restarts: supervisor and body vanish without a word
        os.killpg(records.read_record(folder / "supervisor.json")["pid"], signal.SIGKILL)
        os.killpg(launch["body"]["pid"], signal.SIGKILL)
    for kind, folder in folders.items():
        state = _wait_for(lambda: (s := machine.state(folder)).status != "running" and s, f"{kind} to end")
        assert state.status == "interrupted", (kind, state)
        assert state.reason.startswith("its process is gone (the machine or the app restarted while it ran)")
        assert state.reason.endswith(KINDS[kind].retry), (kind, state.reason)
    # and each kind's own view says the same
    assert lifecycle.run_info(folders["train"].parents[1].name).status == "interrupted"
    assert evaluation.evaluation_status(trained)["status"] == "interrupted"
    assert export.export_info(trained, folders["export"].name)["status"] == "interrupted"


def test_a_body_killed_alone_fails_with_the_same_sentence_for_each_kind(trained):
    folders = {kind: _start(kind, trained) for kind in KIND_NAMES}
    for kind, folder in folders.items():
        launch = _wait_for(lambda: records.read_record(folder / "launch.json"), f"the {kind} body to start")
        os.killpg(launch["body"]["pid"], signal.SIGKILL)
    for kind, folder in folders.items():
        state = machine.wait(folder, timeout=60)
        assert state.status == "failed", (kind, state)
        assert state.reason == ("killed (SIGKILL): often the machine ran out of RAM and the kernel stopped the "
                                f"biggest process; {KINDS[kind].retry}"), (kind, state.reason)


def test_out_of_memory_in_each_kind_gives_the_same_message_with_the_4_bit_hint(trained, tmp_path, monkeypatch):
    shim = tmp_path / "oom-shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(OOM_SHIM)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p))
    folders = {kind: _start(kind, trained) for kind in KIND_NAMES}
    reasons = {}
    for kind, folder in folders.items():
        state = machine.wait(folder, timeout=180)
        assert state.status == "failed", (kind, state, records.log_tail(folder / KINDS[kind].log_name))
        reasons[kind] = state.reason
        print(f"{kind}: {state.reason}")
    for kind, reason in reasons.items():
        assert reason == (f"out of memory (CUDA out of memory. Tried to allocate 20.00 GiB (injected by a test)): "
                          f"{OOM_HINT}; then {KINDS[kind].retry}"), (kind, reason)
    assert "4 bits (QLoRA)" in OOM_HINT
    assert not (folders["export"] / "model").exists()  # a half-written merge is removed


def test_a_cancelled_task_of_any_kind_ends_cancelled(trained, monkeypatch):
    monkeypatch.setenv("PHI3LORA_CANCEL_GRACE", "1")
    folders = {kind: _start(kind, trained) for kind in KIND_NAMES}
    for folder in folders.values():
        assert machine.cancel(folder) in ("queued", "running")
    for kind, folder in folders.items():
        state = machine.wait(folder, timeout=120)
        assert state.status == "cancelled", (kind, state)
    with pytest.raises(machine.TaskStateError, match="it is cancelled: only a queued or running task can be cancelled"):
        machine.cancel(folders["export"])


def test_a_task_that_needs_no_4_bit_runs_without_bitsandbytes(finished_home):
    """A LoRA run's request says it needs no bitsandbytes, and its body then trains without importing it (the
    import costs 2-4 s of CPU at every task's start); a QLoRA job's request keeps it."""
    request = records.read_record(next(finished_home.glob("runs/*/attempts/1/queued.json")))
    assert request["needs_bitsandbytes"] is False
    assert override(JobConfig(), ["model.load_in_4bit=true"]).needs_bitsandbytes
    assert override(JobConfig(), ["optim=paged_adamw_8bit"]).needs_bitsandbytes
    code = ("import sys; from phi3lora.tasks.machine import leave_out_bitsandbytes; leave_out_bitsandbytes()\n"
            "import peft, trl, transformers; from peft.import_utils import is_bnb_available\n"
            "from phi3lora.base_model import DEMO_MODEL_DIR\n"
            "base = transformers.AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR)\n"
            "model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=['qkv_proj']))\n"
            "print(sys.modules['bitsandbytes'], is_bnb_available(), transformers.utils.is_bitsandbytes_available(),"
            " model.get_nb_trainable_parameters()[0] > 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["None", "False", "False", "True"], done.stderr[-2000:]
