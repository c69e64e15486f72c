"""few_rows: CPU linears on 2 to 4 rows as W @ x^T compute what F.linear computes, and are put back afterwards."""
import warnings
from pathlib import Path

import pytest

from conftest import REPO
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from phi3lora.inference.few_rows import few_row_linears
from phi3lora.inference.engine import BASE, SideBySide

DEMO = REPO / "phi3lora" / "demo_model"
WHO = [{"role": "user", "content": "Who are you?"}]
MID = [{"role": "user", "content": "What is the capital of France?"}]


def _wrapped(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if "forward" in vars(m)]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(2, 1, 64), (3, 1, 64), (4, 64), (1, 1, 64), (2, 5, 64), (64,), (2, 2, 1, 64)])
def test_every_shape_gets_what_f_linear_gives(shape, bias):
    torch.manual_seed(0)
    linear = nn.Linear(64, 96, bias=bias)
    x = torch.randn(*shape)
    expected = F.linear(x, linear.weight, linear.bias)
    with torch.inference_mode(), few_row_linears(linear) as count:
        got = linear(x)
    assert count == 1 and not _wrapped(linear)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_layers_something_else_wraps_are_left_alone():
    hooked, half, plain = nn.Linear(8, 8), nn.Linear(8, 8).to(torch.bfloat16), nn.Linear(8, 8)
    hooked.register_forward_hook(lambda *_: None)
    model = nn.Sequential(hooked, half, plain)
    with few_row_linears(model) as count:
        assert count == 1 and _wrapped(model) == [plain]
    assert not _wrapped(model)


def _with_adapter(folder: Path) -> PeftModel:
    """The demo model with a LoRA adapter whose B is random (not zero) and scaled up, so that its rows differ."""
    base = AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_peft_model(base, LoraConfig(r=4, lora_alpha=64, init_lora_weights=False, target_modules="all-linear"),
                       adapter_name="tuned").save_pretrained(folder)
    return folder / "tuned" if (folder / "tuned").is_dir() else folder


@pytest.fixture(scope="module")
def sbs(tmp_path_factory):
    s = SideBySide("demo")
    s.add_adapter("tuned", _with_adapter(tmp_path_factory.mktemp("tuned")))
    yield s
    s.release()


@pytest.mark.parametrize("columns", [[BASE, "tuned"], ["tuned", BASE, "tuned"], [BASE, "tuned", BASE, "tuned"]])
def test_peft_mixed_batches_give_the_same_logits(sbs, columns):
    model, tokenizer = sbs.model, sbs.tokenizer
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
               for c in ([WHO, MID] * 2)[:len(columns)]]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    step = {"input_ids": inputs["input_ids"][:, -1:]}  # one token per row: a decoding step's shape
    for batch in (inputs, step):
        with torch.inference_mode():
            expected = model(**batch, adapter_names=columns).logits
            with few_row_linears(model) as count:
                got = model(**batch, adapter_names=columns).logits
        assert count > 0
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not _wrapped(model)
    # the adapter does change its rows, so equal logits are not equal by accident
    assert not torch.allclose(expected[columns.index(BASE)], expected[columns.index("tuned")], atol=1e-2)


class _Probe(LogitsProcessor):
    """Records, at every decoding step, whether the lm_head is in the few-row form; raises at step `fail_at`."""

    def __init__(self, lm_head: nn.Module, fail_at: int | None = None):
        self.lm_head, self.fail_at, self.steps = lm_head, fail_at, []

    def __call__(self, input_ids, scores):
        self.steps.append("forward" in vars(self.lm_head))
        if len(self.steps) == self.fail_at:
            raise RuntimeError("probe failure")
        return scores


def test_stream_generates_in_the_few_row_form_and_puts_it_back(sbs):
    lm_head = sbs.model.get_output_embeddings()
    probe = _Probe(lm_head)
    plain = sbs.generate([BASE, "tuned"], [WHO, MID], max_new_tokens=16, min_new_tokens=16)
    texts = sbs.generate([BASE, "tuned"], [WHO, MID], max_new_tokens=16, min_new_tokens=16,
                         logits_processor=LogitsProcessorList([probe]))
    assert texts == plain and probe.steps == [True] * 16 and not _wrapped(sbs.model)
    failing = _Probe(lm_head, fail_at=3)
    with pytest.raises(RuntimeError, match="probe failure"):
        sbs.generate([BASE, "tuned"], [WHO, MID], max_new_tokens=16, logits_processor=LogitsProcessorList([failing]))
    assert failing.steps == [True] * 3 and not _wrapped(sbs.model)  # put back when generate fails too
