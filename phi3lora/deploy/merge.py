"""Merge a LoRA adapter into its base model and save the result as a standalone model (no peft needed to load it):
`merge_and_save(adapter_dir, out_dir)`, in the foreground (`python -m phi3lora export --adapter DIR --output DIR`),
and inside every background export (export.py) and Hub push of a merged model (hub_push.py).

The merge runs on the CPU, in the precision of the run's base (bf16 or fp16 on a GPU machine): it needs no GPU
memory, so it never competes with training or the chat model for it (tasks/gpu_memory.py). It imports torch and
peft only when called.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..inference.adapter_info import AdapterError, adapter_settings
from ..tasks.records import read_record


class ExportError(UserError, ValueError):
    """An export cannot be done (no adapter yet, the run still training, the output folder not empty, ...)."""


# --- the merge itself ---------------------------------------------------------------------------------------

def merge_and_save(adapter_dir: str | Path, out_dir: str | Path, log: Callable[[str], Any] = print,
                   dtype: str | None = None) -> Path:
    """Load the base the adapter was trained on, merge the LoRA weights into it, and save a plain transformers model
    (safetensors weights, tokenizer, generation config, README.md) into `out_dir`. Returns `out_dir`.

    `dtype` (auto, bfloat16, float16, float32) overrides the precision the run used: by default the merged model is
    saved in the precision the base loads in for that run (bf16 or fp16 on a GPU, fp32 on a CPU)."""
    from peft import PeftModel

    from ..modeling import choose_base_model, load_base_model, load_tokenizer, resolve_dtype, stop_token_ids

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base_name, settings = adapter_settings(adapter_dir, check_base=False)  # a run's, or a folder its operator named
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise AdapterError(f"{adapter_dir.name} holds no adapter weights (adapter_model.safetensors is missing): "
                           "has its training finished?")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists and is not empty: choose a new output folder")

    # A QLoRA adapter was trained against a 4-bit NF4 base, but merging into 4-bit weights would round the LoRA
    # update away (and peft cannot save a merged 4-bit model as a plain one). So the base is reloaded in its normal
    # precision, never 4-bit, and the adapter merged into that: the usual way to export a QLoRA run.
    method = "qlora" if settings.load_in_4bit else "lora"
    settings = settings.model_copy(update={"load_in_4bit": False, **({"dtype": dtype} if dtype else {})})
    base = choose_base_model(base_name)
    precision = str(resolve_dtype(settings.dtype)).removeprefix("torch.")
    log(f"base model: {base}; loading it in {precision} on the CPU"
        + (" (a QLoRA adapter merges into the full-precision base, not the 4-bit one)" if method == "qlora" else ""))
    tokenizer = load_tokenizer(base.name_or_path, settings.trust_remote_code)
    # On the CPU, whatever the machine has: a merge adds each layer's low-rank update once, which takes seconds
    # there, and the GPU stays with its owners (tasks/gpu_memory.py: training, chat) instead of needing room for a
    # whole 16-bit copy of the base (Phi-3-medium: about 28 GB, more than a 24 GB L4).
    model = load_base_model(settings, base.name_or_path, on_cpu=True)

    log(f"merging the adapter in {adapter_dir}")
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.eval()
    model.config.use_cache = True  # training may have turned the cache off (gradient checkpointing)
    # plain `generate` on the merged model stops at the end of the assistant's turn, as phi3lora's own generation does
    stops = model.generation_config.eos_token_id
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    model.generation_config.eos_token_id = list(dict.fromkeys(stops + stop_token_ids(tokenizer)))
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"saving the merged model to {out_dir}")
    model.save_pretrained(str(out_dir))  # safetensors (transformers never writes pickles unless asked)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "README.md").write_text(_readme(base, adapter_dir, method, precision, out_dir), encoding="utf-8")
    log(f"done: {out_dir} loads with transformers' AutoModelForCausalLM.from_pretrained, no peft needed")
    return out_dir


def _readme(base, adapter_dir: Path, method: str, precision: str, out_dir: Path) -> str:
    run = read_record(adapter_dir / "run.json") or {}
    base_name = "the phi3lora demo model (a tiny Phi-3, phi3lora/demo_model)" if base.is_demo else base.name_or_path
    trained = f"phi3lora run {run['id']} ({adapter_dir})" if run.get("id") else str(adapter_dir)
    return f"""# Merged model: {base_name} + LoRA adapter

This folder is a complete model: the base model with the LoRA adapter's low-rank updates merged into its weights
(peft `merge_and_unload`). It loads with plain transformers, without peft:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{out_dir}")
tokenizer = AutoTokenizer.from_pretrained("{out_dir}")
```

- base model: {base_name}
- adapter: {trained}, trained with {"QLoRA" if method == "qlora" else "LoRA"}
- precision: {precision}{" (a QLoRA adapter is merged into the full-precision base, not the 4-bit one)" if method == "qlora" else ""}
- merged: {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())} by phi3lora

The base model's license applies to this model.
"""
