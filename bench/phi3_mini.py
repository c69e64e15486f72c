"""Phi-3-mini's architecture with random weights, saved as a model folder any loader reads (config, safetensors,
tokenizer): what the GPU benchmarks train, since no hub is needed and none of Microsoft's weights are copied.

    python bench/phi3_mini.py OUT [--size full|demo] [--tokenizer PATH|HUB_ID] [--result FILE.json]

`full` is microsoft/Phi-3-mini-4k-instruct's config (3.8B parameters, sliding_window 2047); `demo` keeps every
setting but the widths and depth (the demo model's), for a dry run on the CPU. Run as its own process: the
weights are made on the GPU when there is one, and the process that builds them exits before anything is timed,
so no measuring process shares the GPU with them.

The tokenizer: --tokenizer, else the real Phi-3 tokenizer from shared/phi3-tokenizer (inside the checkout) or
../shared/phi3-tokenizer (beside it) when present, else the hub id; when none loads, the demo model's (its ids
fit Phi-3's vocabulary), and the result says so. The result names the one used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HUB_TOKENIZER = "microsoft/Phi-3-mini-4k-instruct"
# microsoft/Phi-3-mini-4k-instruct's config.json, field by field (Phi3Config's defaults lack the sliding window)
PHI3_MINI_4K = dict(
    vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, original_max_position_embeddings=4096, sliding_window=2047,
    rms_norm_eps=1e-5, hidden_act="silu", attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
    bos_token_id=1, eos_token_id=32000, pad_token_id=32000, tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)
DEMO_WIDTHS = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=8)  # phi3lora/demo_model's


def config_values(size: str) -> dict:
    return {**PHI3_MINI_4K, **(DEMO_WIDTHS if size == "demo" else {})}


def tokenizer_candidates(given: str | None) -> list[str]:
    if given:
        return [given]
    folders = [REPO / "shared" / "phi3-tokenizer", REPO.parent / "shared" / "phi3-tokenizer"]
    return [str(f) for f in folders if (f / "tokenizer.json").is_file()] + [HUB_TOKENIZER]


def load_tokenizer(candidates: list[str]):
    """The first candidate that loads, its name, and why the ones before it did not."""
    from transformers import AutoTokenizer

    from phi3lora.modeling import DEMO_MODEL_DIR

    problems = []
    for source in candidates:
        try:
            return AutoTokenizer.from_pretrained(source), source, problems
        except Exception as error:  # noqa: BLE001 - no hub, a broken folder: try the next one and say why
            problems.append(f"{source}: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}")
    return AutoTokenizer.from_pretrained(DEMO_MODEL_DIR), "demo tokenizer (the real one did not load)", problems


def build(out: Path, size: str = "full", tokenizer: str | None = None) -> dict:
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    tok, source, problems = load_tokenizer(tokenizer_candidates(tokenizer))
    config = Phi3Config(**config_values(size))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # made in bf16: never a 15 GB fp32 copy first
    with torch.device(device):
        model = Phi3ForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    return {"folder": str(out), "size": size, "built_on": device, "parameters": model.num_parameters(),
            "sliding_window": saved.get("sliding_window"), "vocab_size": saved["vocab_size"],
            "hidden_size": saved["hidden_size"], "layers": saved["num_hidden_layers"],
            "tokenizer": source, "tokenizer_vocab": len(tok), "tokenizer_problems": problems}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", choices=["full", "demo"], default="full")
    parser.add_argument("--tokenizer", help="a tokenizer folder or hub id (default: see the docstring)")
    parser.add_argument("--result", type=Path, help="write what was built as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = build(args.out, args.size, args.tokenizer)
    if args.result:
        args.result.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
