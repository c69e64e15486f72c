"""Adapters on one copy of the base weights: where an adapter came from, and loading the base with adapters.

Adapters attach to the base by name; peft's mixed adapter batches (`adapter_names=[...]`, with "__base__" for
the plain base) then compute every column in one `generate` call.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel

from ..data import for_template
from ..policy.allowed_models import remote_code_allowed, require_allowed
from ..errors import UserError
from ..policy.limits import DEFAULT_MAX_NEW_TOKENS
from ..config import ModelSettings
from ..modeling import choose_base_model, load_base_model, load_tokenizer, stop_token_ids
from ..job_builder import load_job

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class AdapterError(UserError, ValueError):
    """An adapter folder is missing or incomplete; the message names the folder and the missing file."""


def adapter_settings(adapter_dir: str | Path, check_base: bool = True) -> tuple[str | None, ModelSettings]:
    """The base model an adapter was trained on and how it was loaded, from its run folder or its adapter_config.

    An adapter is someone else's data: what it says never turns on code execution (trust_remote_code stays the
    operator's switch, $PHI3LORA_ALLOW_REMOTE_CODE), and with `check_base` the base it names must be on the
    operator's allow-list (policy/allowed_models.py). Pass check_base=False only for adapters this server trained
    itself, or when the caller names the base model."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise AdapterError(f"{adapter_dir.name} is not an adapter folder: adapter_config.json is missing")
    run_config = adapter_dir / "config.yaml"
    if run_config.is_file():
        settings = load_job(run_config).model
        base = settings.base_model
    else:
        base, settings = _peft_base(adapter_dir / "adapter_config.json"), ModelSettings()
    if check_base and base:
        require_allowed(base, f"the adapter {adapter_dir.name}")
    if settings.trust_remote_code and not remote_code_allowed():
        settings = settings.model_copy(update={"trust_remote_code": False})
    return base, settings


def _peft_base(adapter_config: Path) -> str | None:
    try:
        values = json.loads(adapter_config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AdapterError(f"{adapter_config.parent.name}: adapter_config.json is not readable JSON ({error})"[:300]) from None
    base = values.get("base_model_name_or_path") if isinstance(values, dict) else None
    return base if isinstance(base, str) and base else None


def load_with_adapters(base_model: str | None, adapters: dict[str, str | Path], settings: ModelSettings | None = None,
                       on_cpu: bool = False):
    """One base model in memory (on the CPU with `on_cpu`) with each adapter attached under its name. Returns
    (model, tokenizer)."""
    settings = settings or ModelSettings()
    name_or_path = choose_base_model(base_model).name_or_path
    tokenizer = load_tokenizer(name_or_path, settings.trust_remote_code)
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    model = load_base_model(settings, name_or_path, on_cpu=on_cpu)
    for index, (name, path) in enumerate(adapters.items()):
        if index == 0:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        else:
            model.load_adapter(str(path), adapter_name=name)
    model.eval()
    return model, tokenizer


def chat_prompt(tokenizer, conversation: list[dict]) -> str:
    """The text a conversation's answer continues: its system text in the first user message where the template
    has no system role (a Phi-3-medium template would drop it), as in training."""
    return tokenizer.apply_chat_template(for_template(tokenizer, conversation), tokenize=False, add_generation_prompt=True)


@torch.inference_mode()
def generate_columns(model, tokenizer, messages: list[dict], columns: list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[str]:
    """Greedy answers to the same conversation, one per column (an adapter name or BASE), in one batch."""
    prompt = chat_prompt(tokenizer, messages)
    inputs = tokenizer([prompt] * len(columns), return_tensors="pt", add_special_tokens=False).to(model.device)
    extra = {"adapter_names": columns} if isinstance(model, PeftModel) else {}
    output = model.generate(
        **inputs, **extra, max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
