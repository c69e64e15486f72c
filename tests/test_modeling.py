"""The embedded demo model is a real Phi-3 that talks; base-model choice and loading errors are plain."""
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, Phi3ForCausalLM
from trl.chat_template_utils import phi3_chat_template

from conftest import DEMO_MODEL
from phi3lora import modeling
from phi3lora.inference.adapters import generate_columns
from phi3lora.config import ModelSettings


def test_demo_model_is_a_small_real_phi3():
    size = sum(f.stat().st_size for f in DEMO_MODEL.iterdir())
    assert size <= 25 * 1024 * 1024, size
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL)
    assert type(model) is Phi3ForCausalLM
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"} <= names


def test_demo_tokenizer_carries_phi3_chat_format():
    tokenizer = modeling.load_tokenizer(str(DEMO_MODEL))
    assert tokenizer.chat_template == phi3_chat_template  # trl's copy of Phi-3's template
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}],
        tokenize=False,
    )
    assert text == "<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\nA<|end|>\n<|endoftext|>"
    for token in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"):
        assert len(tokenizer.tokenize(token)) == 1
    assert tokenizer.pad_token == tokenizer.unk_token != tokenizer.eos_token  # fixed on load
    assert tokenizer.convert_tokens_to_ids("<|end|>") in modeling.stop_token_ids(tokenizer)


def test_demo_base_model_answers_in_words():
    model = modeling.load_base_model(ModelSettings(), str(DEMO_MODEL))
    tokenizer = modeling.load_tokenizer(str(DEMO_MODEL))
    tokenizer.padding_side = "left"
    [answer] = generate_columns(model, tokenizer, [{"role": "user", "content": "Explain what a computer is."}],
                                ["__base__"], max_new_tokens=40)
    words = re.findall(r"[A-Za-z]+", answer)
    assert len(words) >= 8, answer
    assert sum(len(w) for w in words) >= 0.6 * len(answer.replace(" ", "")), answer
    [who] = generate_columns(model, tokenizer, [{"role": "user", "content": "Who are you?"}], ["__base__"], 30)
    assert "Phi-3 Demo" in who


@pytest.mark.parametrize(
    "requested, env, cuda, expected, is_demo",
    [
        ("demo", None, True, str(DEMO_MODEL), True),
        ("some/model", "demo", True, "some/model", False),
        (None, "org/other", False, "org/other", False),
        (None, "demo", True, str(DEMO_MODEL), True),
        (None, None, True, "microsoft/Phi-3-mini-4k-instruct", False),
        (None, None, False, str(DEMO_MODEL), True),
    ],
)
def test_which_base_model(monkeypatch, requested, env, cuda, expected, is_demo):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)  # no GPU here: pretend, to test the choice only
    if env:
        monkeypatch.setenv("PHI3LORA_BASE_MODEL", env)
    choice = modeling.choose_base_model(requested)
    assert (choice.name_or_path, choice.is_demo) == (expected, is_demo)
    assert choice.why


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)], ids=["sm80", "sm75"])
def test_auto_dtype_is_bf16_only_where_the_gpu_has_it_natively(monkeypatch, native, expected):
    """A T4 or V100 answers bf16 "supported" through emulation, at a fraction of fp16's speed: it gets fp16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert modeling.resolve_dtype("auto") == expected


def test_dtype_on_cpu_is_fp32():
    assert modeling.resolve_dtype("auto") == torch.float32
    assert modeling.resolve_dtype("bfloat16") == torch.bfloat16


def test_loading_errors_are_plain(tmp_path):
    with pytest.raises(modeling.ModelLoadError, match="cannot load the tokenizer of"):
        modeling.load_tokenizer(str(tmp_path / "nowhere"))
    with pytest.raises(modeling.ModelLoadError, match="cannot load base model"):
        modeling.load_base_model(ModelSettings(), str(tmp_path))
    with pytest.raises(modeling.ModelLoadError, match="flash_attention_2' needs the flash-attn package"):
        modeling.load_base_model(ModelSettings(attn_implementation="flash_attention_2"), str(DEMO_MODEL))
