"""Adapters on one copy of the base weights: the base loaded with each adapter attached, and their answers.

Adapters attach to the base by name; peft's mixed adapter batches (`adapter_names=[...]`, with "__base__" for
the plain base) then compute every column in one `generate` call.
"""
from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel

from ..data import for_template
from ..policy.limits import DEFAULT_MAX_NEW_TOKENS
from ..config import ModelSettings
from ..modeling import choose_base_model, load_base_model, load_tokenizer, stop_token_ids

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
