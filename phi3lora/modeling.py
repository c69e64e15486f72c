"""Load a Phi-3 base model and its tokenizer (dtype, attention, 4-bit), and attach LoRA adapters to it.

Which base: a hub id, a local folder, or `demo` (the tiny Phi-3 shipped in `phi3lora/demo_model`): base_model.py
chooses it, and tokenizer_loading.py loads its tokenizer, both without torch.
Weights load from safetensors only, and no code from a model repository runs unless asked for.
A job's model-specific defaults (the demo model's own) are applied in job_builder.resolve_job.
"""
from __future__ import annotations

import importlib.util
import os

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

from .base_model import DEFAULT_GPU_MODEL, DEMO_MODEL_DIR, BaseModelChoice, ModelLoadError, choose_base_model
from .config import ModelSettings
from .tokenizer_loading import load_tokenizer

__all__ = [  # the base model's choice and the tokenizer live in torch-free modules; callers import them from here too
    "DEFAULT_GPU_MODEL", "DEMO_MODEL_DIR", "END_OF_TURN", "BaseModelChoice", "ModelLoadError", "choose_base_model",
    "load_base_model", "load_tokenizer", "resolve_dtype", "stop_token_ids",
]

END_OF_TURN = "<|end|>"  # Phi-3 closes every turn with it; generation must stop there, not only at <|endoftext|>


def resolve_dtype(setting: str) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    if not torch.cuda.is_available():
        return torch.float32  # bf16 on CPUs without native support is ~35x slower than fp32
    # Without emulation: sm70/sm75 (V100, T4) answer True through emulation, at a fraction of fp16's speed.
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    return [i for i in dict.fromkeys(ids) if i is not None and i != tokenizer.unk_token_id]


def load_base_model(settings: ModelSettings, name_or_path: str, on_cpu: bool = False) -> PreTrainedModel:
    """The base model, on this process's GPU when there is one; `on_cpu` keeps it in RAM (an export's merge)."""
    dtype = resolve_dtype(settings.dtype)
    if settings.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ModelLoadError("attention 'flash_attention_2' needs the flash-attn package: install it, or choose 'sdpa'")
    quantization = None
    if settings.load_in_4bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            # FSDP and ZeRO-3 shard flat tensors of one dtype: the packed 4-bit weights are stored as the compute dtype
            **({"bnb_4bit_quant_storage": dtype} if _sharded_by_accelerate() else {}),
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            dtype=dtype,
            attn_implementation=settings.attn_implementation,
            quantization_config=quantization,
            use_safetensors=True,  # never unpickle weights
            trust_remote_code=settings.trust_remote_code,
            device_map={"": "cpu"} if on_cpu else _device_map(),
        )
    except (OSError, ValueError, ImportError) as error:
        raise ModelLoadError(f"cannot load base model {name_or_path!r}: {_first_line(error)}") from None
    return model


def _device_map() -> dict[str, int] | None:
    # One process per GPU under accelerate/torchrun; LOCAL_RANK says which one is ours. Under FSDP or ZeRO-3 the
    # weights load on the CPU (transformers loads them lazily, without a second copy) and accelerate shards them
    # across the GPUs as it wraps the model: a device_map would put a whole copy on every GPU.
    if torch.cuda.is_available() and not _sharded_by_accelerate():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return None


def _sharded_by_accelerate() -> bool:
    """This process is a rank of `accelerate launch` with FSDP or DeepSpeed ZeRO-3 (the launcher says so in these)."""
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    zero3 = (os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
             and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3")
    return fsdp or zero3


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
