"""What the trainer is set up to do, checked in-process on the demo model: only LoRA trains, the loss covers
the assistant's turns (and their <|end|>) only, padding is not eos, QLoRA's base is 4-bit, embeddings can adapt."""
from phi3lora.config import JobConfig
from phi3lora.training.trainer import prepare
from phi3lora.job_builder import override


def _prepare(tmp_path, identity_data, *overrides):
    config = override(JobConfig(), [f"data.path={identity_data}", "model.base_model=demo", *overrides])
    return prepare(config, tmp_path, log=lambda *_: None)


def test_only_lora_parameters_train(tmp_path, identity_data):
    trainer = _prepare(tmp_path, identity_data).trainer
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable), trainable[:5]
    modules = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert modules == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    # r * (in + out) per LoRA pair: qkv 256->768, o 256->256, gate_up 256->1408, down 704->256; 4 layers
    expected = 4 * 16 * ((256 + 768) + (256 + 256) + (256 + 1408) + (704 + 256))
    assert sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) == expected


def test_loss_covers_assistant_turns_only_and_pad_is_not_eos(tmp_path, identity_data):
    job = _prepare(tmp_path, identity_data)
    tokenizer = job.trainer.processing_class
    assert tokenizer.pad_token_id != tokenizer.eos_token_id  # else padding-masked eos would never be learned
    batch = next(iter(job.trainer.get_train_dataloader()))
    end, assistant, user = (tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|assistant|>", "<|user|>"))
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        trained = [i for i, label in zip(ids, labels) if label != -100]
        assert trained, "every conversation has an assistant turn to learn from"
        assert user not in trained and assistant not in trained  # prompts and role markers are not learned
        assert end in trained  # the assistant's end of turn is learned, so the model learns to stop
        prompt_start = ids.index(user)
        assert labels[prompt_start] == -100


def test_embedding_can_be_adapted(tmp_path, identity_data):
    trainer = _prepare(tmp_path, identity_data, "peft_config.target_modules=[qkv_proj, embed_tokens]").trainer
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any("embed_tokens.lora_embedding_A" in n for n in trainable), trainable


def test_qlora_loads_the_base_in_4bit_nf4(tmp_path, identity_data):
    import bitsandbytes as bnb

    trainer = _prepare(tmp_path, identity_data, "model.load_in_4bit=true").trainer
    quantized = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 4 * 4
    assert quantized[0].weight.quant_state.quant_type == "nf4"
    assert quantized[0].weight.quant_state.nested  # double quantisation
    assert all("lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)


def test_cpu_trains_in_fp32(tmp_path, identity_data):
    args = _prepare(tmp_path, identity_data).trainer.args
    assert not args.bf16 and not args.fp16


def test_liger_kernels_are_refused_without_a_gpu_naming_the_setting(tmp_path, identity_data):
    import pytest

    from phi3lora.config import ConfigError

    with pytest.raises(ConfigError, match="training_config.use_liger_kernel: Liger's kernels run on a CUDA GPU only"):
        _prepare(tmp_path, identity_data, "use_liger_kernel=true")
    assert not (tmp_path / "config.yaml").exists()  # refused before anything was written
