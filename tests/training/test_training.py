"""Real LoRA training of the demo model on the identity sample, through the CLI in real processes, then checks of
what it leaves behind: the adapter layout, LoRA-only weights, plain-peft loading, and a changed identity."""
import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from conftest import DEMO_MODEL, IDENTITY_MARKERS, run_cli
from phi3lora.job_builder import load_job



@pytest.fixture(scope="module")
def identity_run(identity_home):
    """The run folder of the session's identity run (trained by `runs start`, the CLI in real processes), and
    what its trainer printed."""
    run = identity_home / "runs" / (identity_home / "trained").read_text()
    logs = sorted(run.glob("attempts/*/train.log"))
    assert logs, sorted(p.name for p in run.iterdir())
    return run, logs[-1].read_text()


def test_output_names_the_base_model_and_the_run_took_the_demo_defaults(identity_run):
    run, output = identity_run
    assert "lora: base model: " in output and "the embedded demo model" in output
    assert "LoRA only" in output
    training = load_job(run / "config.yaml").training_config  # resolved when the run was queued
    assert (training.learning_rate, training.num_train_epochs, training.max_length) == (5e-3, 5.0, 512)


def test_foreground_training_says_which_demo_defaults_it_applied(identity_data, tmp_path):
    done = run_cli("train", "--data", identity_data, "--output", tmp_path, "--set", "max_steps=1",
                   "--set", "eval_size=0", "--set", "save_strategy=no")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "demo-model defaults: learning_rate=0.005" in done.stdout


def test_adapter_is_standard_peft_with_lora_weights_only(identity_run):
    out, _ = identity_run
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA"
    assert set(adapter_config["target_modules"]) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (16, 32)
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys), keys[:5]
    # 4 layers x 4 modules x (A, B)
    assert len(keys) == 4 * 4 * 2
    adapter_bytes = (out / "adapter_model.safetensors").stat().st_size
    base_bytes = (DEMO_MODEL / "model.safetensors").stat().st_size
    assert adapter_bytes < 0.25 * base_bytes, (adapter_bytes, base_bytes)


def test_adapter_loads_with_plain_peft_and_changes_the_model(identity_run):
    out, _ = identity_run
    base = AutoModelForCausalLM.from_pretrained(DEMO_MODEL)
    adapted = PeftModel.from_pretrained(base, out)
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: non-zero means it trained
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        with adapted.disable_adapter():
            plain = adapted(ids).logits
        changed = adapted(ids).logits
    assert not torch.allclose(plain, changed)


def test_run_folder_keeps_config_metrics_checkpoints_and_summary(identity_run):
    out, _ = identity_run
    config = load_job(out / "config.yaml")
    assert config.model.base_model == "demo" and config.method == "lora"
    assert config.data.path.endswith("identity-wrenfield.jsonl")  # conftest.identity_dataset
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [e["loss"] for e in events if "loss" in e]
    eval_losses = [e["eval_loss"] for e in events if "eval_loss" in e]
    assert len(train_losses) >= 3 and len(eval_losses) >= 2
    assert train_losses[-1] < train_losses[0]
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and (checkpoints[-1] / "adapter_model.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_conversations"] + summary["eval_conversations"] == 90
    assert summary["eval_loss"] is not None and summary["global_step"] > 0


def test_compare_shows_the_new_identity(identity_run):
    out, _ = identity_run
    done = run_cli("compare", "--adapter", out, "--prompt", "Who are you?", "--json", "--max-new-tokens", "40")
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers["base"] != answers["adapted"]
    assert any(m in answers["adapted"] for m in IDENTITY_MARKERS), answers
    assert not any(m in answers["base"] for m in IDENTITY_MARKERS), answers
    assert "Phi-3 Demo" in answers["base"], answers


def test_saved_config_reruns_the_job(identity_run, tmp_path):
    out, _ = identity_run
    done = run_cli("train", "--config", out / "config.yaml", "--output", tmp_path, "--set", "max_steps=2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "adapter_model.safetensors").is_file()
