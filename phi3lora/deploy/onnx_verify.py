"""The side-by-side check of an ONNX export: the same greedy prompts through the export (onnxruntime-genai) and
through torch (the base with the adapter attached by peft, as phi3lora's own chat runs it), token for token, and
each one's tokens per second.

Both read the same prompt tokens (the base tokenizer's, with the chat template), so a difference is the model's,
not the tokenizer's; whether onnxruntime-genai's own tokenizer encodes the prompts alike is reported beside.
torch runs on the CPU in fp32: the check must not take GPU memory from training or the chat model
(tasks/gpu_memory.py), and fp32 is the reference an fp32 export must match exactly. An int4 export rounds the
weights to 4 bits, so its answers may part from torch's after a few tokens: the check says where.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..inference.adapter_info import adapter_settings

DEFAULT_PROMPTS = ("Who are you?", "What can you do?", "Who made you?")
MAX_NEW_TOKENS = 32  # enough to see an answer part from torch's; torch on a CPU is the slow side


def verify(onnx_dir: str | Path, adapter_dir: str | Path, prompts: tuple[str, ...] | list[str] = DEFAULT_PROMPTS,
           max_new_tokens: int = MAX_NEW_TOKENS) -> dict[str, Any]:
    """{agree, prompts: [{prompt, same, first_difference, torch, onnx}], onnx_tokens_per_second,
    torch_tokens_per_second, onnx_tokenizer_agrees, precision, max_new_tokens}; `skipped` with the reason instead
    when this machine cannot run the export (a CUDA export without a CUDA onnxruntime-genai)."""
    import numpy as np
    import onnxruntime_genai as og

    onnx_dir = Path(onnx_dir)
    config = json.loads((onnx_dir / "genai_config.json").read_text(encoding="utf-8"))
    session = config["model"]["decoder"]["session_options"]
    providers = [next(iter(option)) for option in session.get("provider_options", [])]
    if "cuda" in providers and not og.is_cuda_available():
        return {"skipped": "the export is for CUDA and this machine's onnxruntime-genai has no CUDA"}
    model, tokenizer, stops = _torch_model(Path(adapter_dir))
    from ..inference.adapters import chat_prompt

    texts = [chat_prompt(tokenizer, [{"role": "user", "content": prompt}]) for prompt in prompts]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    # Each side's prompts in one go, torch first: onnxruntime's threads spin a while after each run, and would
    # slow torch down if the two took turns. Each side first answers once, short: its warm-up is not its speed.
    _torch_greedy(model, encoded[0], 2, stops, tokenizer.pad_token_id)
    torch_runs = [_torch_greedy(model, ids, max_new_tokens, stops, tokenizer.pad_token_id) for ids in encoded]
    del model
    onnx_model = og.Model(str(onnx_dir))
    onnx_tokenizer = og.Tokenizer(onnx_model)
    tokenizer_agrees = all([int(i) for i in onnx_tokenizer.encode(text)] == ids for text, ids in zip(texts, encoded))
    _onnx_greedy(og, np, onnx_model, encoded[0], 2)
    onnx_runs = [_onnx_greedy(og, np, onnx_model, ids, max_new_tokens) for ids in encoded]

    rows = []
    for prompt, (torch_tokens, _), (onnx_tokens, _) in zip(prompts, torch_runs, onnx_runs):
        torch_answer, onnx_answer = _until_stop(torch_tokens, stops), _until_stop(onnx_tokens, stops)
        difference = next((i for i, (a, b) in enumerate(zip(torch_answer, onnx_answer)) if a != b),
                          None if len(torch_answer) == len(onnx_answer) else min(len(torch_answer), len(onnx_answer)))
        rows.append({"prompt": prompt, "same": difference is None, "first_difference": difference,
                     "torch": tokenizer.decode(torch_answer, skip_special_tokens=True).strip(),
                     "onnx": tokenizer.decode(onnx_answer, skip_special_tokens=True).strip(),
                     "torch_tokens": torch_answer, "onnx_tokens": onnx_answer})
    totals = {name: (sum(len(tokens) for tokens, _ in runs), sum(seconds for _, seconds in runs))
              for name, runs in (("torch", torch_runs), ("onnx", onnx_runs))}
    speed = {name: round(count / seconds, 1) if seconds else None for name, (count, seconds) in totals.items()}
    return {"agree": all(row["same"] for row in rows), "prompts": rows,
            "onnx_tokens_per_second": speed["onnx"], "torch_tokens_per_second": speed["torch"],
            "onnx_tokenizer_agrees": tokenizer_agrees, "precision": _precision(onnx_dir),
            "max_new_tokens": max_new_tokens}


def summary(result: dict[str, Any]) -> str:
    """One sentence for the log, the CLI and the Runs tab."""
    if "skipped" in result:
        return f"not checked against torch: {result['skipped']}"
    rows = result["prompts"]
    same = sum(row["same"] for row in rows)
    parted = "; ".join(f"{row['prompt']!r} parts at token {row['first_difference']}" for row in rows if not row["same"])
    return (f"the export's greedy answers match torch's token for token on {same} of {len(rows)} prompts"
            + (f" ({parted})" if parted else "")
            + f"; {result['onnx_tokens_per_second']} tokens/s with ONNX Runtime vs {result['torch_tokens_per_second']}"
            + " with torch on the CPU")


def _torch_model(adapter_dir: Path):
    """The base in fp32 on the CPU with the adapter attached (peft), its tokenizer and its stop tokens."""
    from ..inference.adapters import load_with_adapters
    from ..modeling import stop_token_ids

    base_name, settings = adapter_settings(adapter_dir, check_base=False)
    settings = settings.model_copy(update={"load_in_4bit": False, "dtype": "float32"})
    model, tokenizer = load_with_adapters(base_name, {"adapted": adapter_dir}, settings, on_cpu=True)
    model.config.use_cache = True
    return model, tokenizer, set(stop_token_ids(tokenizer))


def _torch_greedy(model, ids: list[int], max_new_tokens: int, stops: set[int], pad_id) -> tuple[list[int], float]:
    import torch

    inputs = torch.tensor([ids])
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                max_new_tokens=max_new_tokens, eos_token_id=sorted(stops), pad_token_id=pad_id)
    return output[0, len(ids):].tolist(), time.perf_counter() - started


def _onnx_greedy(og, np, model, ids: list[int], max_new_tokens: int) -> tuple[list[int], float]:
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + max_new_tokens)
    started = time.perf_counter()
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens, time.perf_counter() - started


def _until_stop(tokens: list[int], stops: set[int]) -> list[int]:
    """An answer's tokens before its end-of-turn (each side may stop on a different one of the stop tokens)."""
    return next((tokens[:i] for i, token in enumerate(tokens) if token in stops), tokens)


def _precision(onnx_dir: Path) -> str | None:
    """The precision phi3lora wrote into the export's README ("- precision: int4, ..."), if there is one."""
    readme = onnx_dir / "README.md"
    for line in readme.read_text(encoding="utf-8").splitlines() if readme.is_file() else []:
        if line.startswith("- precision: "):
            return line.removeprefix("- precision: ").split(",")[0]
    return None
