"""The mean log-probability margin (chosen minus rejected) of adapters on preference pairs, measured with plain
transformers + peft alone (none of phi3lora's code), for the DPO tests."""
from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

DEMO_MODEL = Path(__file__).resolve().parents[1] / "phi3lora" / "demo_model"


def mean_margins(rows: list[dict], adapters: dict[str, Path]) -> dict[str, float]:
    """name -> the adapter's mean over `rows` (trl's conversational pairs) of log p(chosen) - log p(rejected), each
    summed over the answer's tokens after the prompt."""
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    base = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, dtype=torch.float32)
    names = list(adapters)
    model = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    model.eval()

    def answer_logprob(prompt: list[dict], answer: str) -> float:
        prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        whole = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
        assert whole.startswith(prefix)
        start = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tokenizer(whole, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        return logprobs[start - 1:].gather(1, ids[0, start:, None]).sum().item()

    means = {}
    for name in names:
        model.set_adapter(name)
        margins = [answer_logprob(row["prompt"], row["chosen"][0]["content"])
                   - answer_logprob(row["prompt"], row["rejected"][0]["content"]) for row in rows]
        means[name] = sum(margins) / len(margins)
    return means
