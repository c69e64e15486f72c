"""A background run on two processes (DDP over gloo on the CPU, as on two GPUs): a cancel stops every rank at the
same step with the adapter saved, and a resume launches it the same way and continues it to the end."""
import json

import psutil
import pytest

from phi3lora.config import JobConfig
from phi3lora.job_builder import override
from phi3lora.runs import lifecycle, registry
from phi3lora.tasks import processes, records
from test_jobs import TINY, _launch, _wait_until

@pytest.fixture(autouse=True)
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_a_two_process_run_cancels_on_every_rank_and_resumes_to_the_end(monkeypatch, identity_data):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread per rank: two ranks on the CI's two cores
    config = override(JobConfig(), [f"data.path={identity_data}", "model.base_model=demo", *TINY, "max_steps=16",
                                     "logging_steps=1", "save_strategy=steps", "save_steps=2", "eval_strategy=no"])
    run_id = lifecycle.start_run(config, processes=2)
    launch = _launch(run_id)
    assert launch["processes"] == 2 and launch["command"][launch["command"].index("--num_processes") + 1] == "2"
    run = registry.run_dir(run_id)
    _wait_until(lambda: (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists(), timeout=300,
                what="checkpoint-2")
    body = psutil.Process(launch["body"]["pid"])
    ranks = [p for p in body.children(recursive=True) if "phi3lora.tasks" in " ".join(p.cmdline())]
    assert len(ranks) == 2, [p.cmdline() for p in ranks]

    lifecycle.cancel_run(run_id)
    info = lifecycle.wait_for_run(run_id, timeout=120)
    assert info.status == "cancelled" and "the adapter as it stood is saved" in info.reason, info  # not killed
    assert 2 <= info.step < 16 and (run / "adapter_model.safetensors").is_file()
    assert not any(rank.is_running() and rank.status() != psutil.STATUS_ZOMBIE for rank in ranks)
    assert not processes.is_alive(launch["body"])

    lifecycle.resume_run(run_id)
    info = lifecycle.wait_for_run(run_id, timeout=300)
    assert info.status == "completed" and info.attempts == 2 and info.step == 16, info
    assert records.read_record(registry.latest_attempt(run) / "launch.json")["processes"] == 2  # launched as before
    assert (registry.latest_attempt(run) / "train.log").read_text().count("resuming from checkpoint-") == 1  # one voice
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    starts = [i for i, e in enumerate(events) if e.get("event") == "start"]
    assert len(starts) == 2  # one writer: one start per attempt, not one per rank
    for attempt in (events[starts[0]:starts[1]], events[starts[1]:]):
        logged = [e["step"] for e in attempt if "loss" in e]
        assert logged == list(range(logged[0], logged[-1] + 1)), logged  # each step once, in order
    assert [e["step"] for e in events[starts[1]:] if "loss" in e][-1] == 16
