"""Training on several processes: `train --processes 2` on the CPU (DDP over gloo, the code paths of several GPUs)
writes one metrics stream and one of each file, and a sharded launch (FSDP, ZeRO-3) loads the base without a
device map, FSDP's 4-bit weights stored in the compute dtype."""
import json

import pytest
import torch

from conftest import DEMO_MODEL, run_cli
from phi3lora import modeling
from phi3lora.config import ModelSettings
from phi3lora.job_builder import load_job

def test_train_on_two_cpu_processes_writes_one_stream_and_one_of_each_file(tmp_path, identity_data):
    out, data = tmp_path / "out", tmp_path / "identity-36.jsonl"
    data.write_text("".join(identity_data.read_text().splitlines(keepends=True)[:36]))  # 32 train, 4 eval
    sets = ["max_steps=4", "logging_steps=1", "max_length=128", "per_device_train_batch_size=2",
            "per_device_eval_batch_size=2", "eval_strategy=no", "save_strategy=no"]
    done = run_cli("train", "--output", out, "--data", data, "--model", "demo", "--processes", "2",
                   *[a for s in sets for a in ("--set", s)], env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done in") == 1 and done.stdout.count("trainable parameters") == 1  # rank 0 speaks
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if "loss" in e] == [1, 2, 3, 4]  # each step once, not once per rank
    assert sum(e.get("event") == "start" for e in events) == 1
    summary = json.loads((out / "summary.json").read_text())
    # 4 steps of 2 conversations on each of 2 ranks: half of the 32 training conversations, so two ranks trained
    assert summary["global_step"] == 4 and summary["train_conversations"] == 32
    assert [e["epoch"] for e in events if "loss" in e][-1] == 0.5
    assert load_job(out / "config.yaml").training_config.max_steps == 4
    assert not list(out.glob(".config.yaml.*")) and (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("launcher_env, sharded", [
    ({}, False),
    ({"ACCELERATE_USE_FSDP": "true"}, True),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, True),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, False),
])
def test_sharded_launches_load_without_a_device_map(monkeypatch, launcher_env, sharded):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU rank, as far as the loader can tell
    monkeypatch.setenv("LOCAL_RANK", "1")
    for name, value in launcher_env.items():
        monkeypatch.setenv(name, value)
    assert modeling._device_map() == (None if sharded else {"": 1})


def test_fsdp_stores_the_4bit_weights_in_the_compute_dtype(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    model = modeling.load_base_model(ModelSettings(load_in_4bit=True, dtype="float32"), str(DEMO_MODEL))
    stored = {m.weight.dtype for m in model.modules() if type(m).__name__ == "Linear4bit"}
    assert stored == {torch.float32}  # packed into the dtype of the rest (alone, bitsandbytes packs into uint8)
    assert model.config.quantization_config.bnb_4bit_quant_storage == torch.float32
