"""The memory estimate before a run starts: its arithmetic for a shape small enough to count by hand, the refusal of a
run that would not fit (before anything is queued or loaded, naming the figures and the setting that fits), and
`train --dry-run`. bench/memory_estimate.py compares the estimate with measured peaks (README's Performance)."""
import json

import pytest

from conftest import run_cli
from phi3lora.config import JobConfig
from phi3lora.job_builder import override
from phi3lora.training import memory_estimate
from phi3lora.training.memory_estimate import GB, MemoryWontFit

# hidden 8, inner 16, 2 layers, vocabulary 32, 2 heads of 4: every figure below is counted by hand from these
TINY_SHAPE = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 8, "intermediate_size": 16,
              "num_hidden_layers": 2, "vocab_size": 32, "num_attention_heads": 2, "num_key_value_heads": 2,
              "max_position_embeddings": 64, "tie_word_embeddings": False}


@pytest.fixture
def tiny_model(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_SHAPE))  # no weights: the count comes from the shapes
    return folder


def _job(model, *settings):
    return override(JobConfig(), [f"model.base_model={model}", "per_device_train_batch_size=2", "max_length=16",
                                  "peft_config.r=2", "gradient_checkpointing=false", "model.dtype=float32", *settings])


def test_the_estimate_for_a_shape_counted_by_hand(tiny_model):
    parts = memory_estimate.estimate(_job(tiny_model), "cpu").parts
    # linear weights per layer: qkv 8x24 + o 8x8 + gate_up 8x32 + down 16x8 = 640; embedding and lm_head 2x32x8;
    # norms (2 per layer + 1) x 8: 1280 + 512 + 40 = 1832 parameters in fp32
    assert parts["weights (float32)"] == 1832 * 4
    # LoRA r=2 per layer: qkv 2x(8+24) + o 2x(8+8) + gate_up 2x(8+32) + down 2x(16+8) = 224, x 2 layers = 448
    assert parts["LoRA weights + gradients"] == 448 * 4 * 2
    assert parts["optimizer state"] == 448 * 2 * 4  # AdamW's two fp32 moments
    # per token and layer: norms 4x8 + q,k,v 24 + attention out 8 + MLP 3x16 + residuals 2x8 = 128 values, and the
    # LoRA inputs 8+8+8+16 = 40 values with a 1-byte dropout mask each: 128x4 + 40x5 = 712 bytes; 32 tokens, 2 layers
    assert parts["activations"] == int(32 * 2 * 712 * memory_estimate.BACKWARD_FACTOR["cpu"])
    assert parts["loss tiles (lm_head)"] == 32 * 32 * 4 * memory_estimate.LOSS_TILE_COPIES["cpu"]
    assert parts["fixed overhead (libraries)"] == memory_estimate.CPU_FIXED_OVERHEAD

    checkpointed = memory_estimate.estimate(_job(tiny_model, "gradient_checkpointing=true"), "cpu").parts
    # each layer's input (8 values) kept for both layers, and one layer's activations while it is recomputed
    assert checkpointed["activations (checkpointed)"] == int(32 * (2 * 8 * 4 + 712) * 2.2)
    quantised = memory_estimate.estimate(_job(tiny_model, "load_in_4bit=true"), "cpu").parts
    assert quantised["weights (4-bit NF4)"] == int(1280 * 0.516 + 552 * 4)  # NF4 linear weights; the rest in fp32
    assert quantised["4-bit weights dequantised"] == 2 * 8 * 32 * 4  # gate_up, the largest, in fp32 twice at once
    on_gpu = memory_estimate.estimate(_job(tiny_model, "model.dtype=auto", "optim=adamw_8bit"), "cuda")
    assert on_gpu.dtype == "bfloat16" and on_gpu.parts["weights (bfloat16)"] == 1832 * 2
    assert on_gpu.parts["optimizer state"] == 448 * 2 * 1  # bitsandbytes' 8-bit moments
    preference = memory_estimate.estimate(_job(tiny_model, "training_config.objective=dpo"), "cpu").parts
    assert abs(preference["activations"] - 2 * parts["activations"]) <= 1  # chosen and rejected rows in one batch


def test_a_run_that_would_not_fit_is_refused_before_anything_is_queued_or_loaded(identity_data, tmp_path,
                                                                                  monkeypatch):
    from phi3lora.runs import lifecycle, registry
    from phi3lora.training import trainer

    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    from phi3lora.job_builder import resolve_job

    config, _ = resolve_job(override(JobConfig(), [f"data.path={identity_data}", "model.base_model=demo"]))
    assert config.training_config.per_device_train_batch_size == 8  # the demo's defaults: 8 rows of 512 tokens
    needed = memory_estimate.estimate(config, "cpu").total
    monkeypatch.setenv("PHI3LORA_MEMORY_GB", f"{0.8 * needed / GB:.3f}")
    with pytest.raises(MemoryWontFit) as refused:
        lifecycle.start_run(config)
    message = str(refused.value)
    assert f"about {needed / GB:.2f} GB of RAM" in message and "activations" in message
    assert f"{0.8 * needed / GB:.2f} GB is free (PHI3LORA_MEMORY_GB)" in message
    # the fix offered is the first that fits when estimated again: checkpointing keeps what is learnt and fits here
    assert "it would fit with training_config.gradient_checkpointing=true (about" in message
    fixed = override(config, ["gradient_checkpointing=true"])
    assert memory_estimate.estimate(fixed, "cpu").total <= 0.8 * needed
    assert not registry.runs_root().exists() or not any(registry.runs_root().iterdir())  # no run folder, no task

    # the trainer itself refuses too (a foreground `train`, a run's task), before any weight loads
    monkeypatch.setattr(trainer, "load_base_model", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(MemoryWontFit, match="gradient_checkpointing=true"):
        trainer.prepare(config, tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_train_dry_run_prints_the_job_and_its_estimate_and_starts_nothing(identity_data, tmp_path):
    output = tmp_path / "out"
    done = run_cli("train", "--dry-run", "--json", "--data", identity_data, "--output", output, "--model", "demo",
                   "--set", "max_length=256")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["job"]["training_config"]["max_length"] == 256 and report["conversations"] == 90
    memory = report["memory"]
    assert memory["fits"] is True and memory["estimate"]["device"] == "cpu"
    assert memory["estimate"]["total_gb"] == pytest.approx(sum(memory["estimate"]["parts_gb"].values()), abs=0.01)
    assert not output.exists()

    refused = run_cli("train", "--dry-run", "--data", identity_data, "--output", output, "--model", "demo",
                      env={"PHI3LORA_MEMORY_GB": "1.0"})
    assert refused.returncode == 1
    assert "# memory estimate (cpu, float32):" in refused.stdout and "free (PHI3LORA_MEMORY_GB)" in refused.stdout
    assert refused.stderr.startswith("error: this run would need about") and "it would fit with" in refused.stderr
    assert "Traceback" not in refused.stderr and not output.exists()


def test_on_a_gpu_the_free_memory_is_torchs_and_an_idle_chat_model_counts_as_free(tiny_model, tmp_path, monkeypatch):
    import torch

    from phi3lora.tasks import gpu_memory

    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PHI3LORA_GPU_MEMORY_GB", raising=False)
    monkeypatch.delenv("PHI3LORA_MEMORY_GB", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU with 0.5 GB free of 8 (no GPU here)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (GB // 2, 8 * GB))
    job = _job(tiny_model, "model.dtype=auto")
    refused = memory_estimate.report(job, "cuda")
    assert refused["fits"] is False and refused["available_gb"] == 0.5 and refused["available_from"] == "free GPU memory"
    assert "of GPU" in refused["message"] and "0.50 GB is free (free GPU memory)" in refused["message"]
    with gpu_memory.hold("chat", "the chat model (tiny)", 2 * GB, releasable=True):  # it lets go when a run asks
        assert memory_estimate.report(job, "cuda")["available_gb"] == 2.5
        memory_estimate.check_fits(job, "cuda")
