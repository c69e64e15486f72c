"""Benchmark: base + adapter in ONE mixed batch vs two sequential generations of the same length.

    python bench/side_by_side.py [--adapter DIR] [--max-new-tokens 64] [--repeats 5] [--out result.json]

Without --adapter, a 3-step adapter is trained on identity.json into a temporary folder (demo model).
Every generation is forced to exactly --max-new-tokens new tokens (min_new_tokens = max_new_tokens), greedy.
Rows:
  batched     one generate, batch of 2, adapter_names=["__base__", "adapted"] (peft mixed batch)
  sequential  two generates, batch of 1 each: base with the adapter disabled, then with the adapter active
              (the plain single-adapter path, no per-row routing: the fastest way to do one column at a time)
  streamed    the batched run through SideBySide.stream (thread + queue + per-step decode), for its overhead
Each is warmed up once, then all are timed --repeats times, interleaved; medians are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch

from phi3lora.modeling import stop_token_ids
from phi3lora.side_by_side import BASE, SideBySide

CONVERSATION = [{"role": "user", "content": "Who are you?"}]


def train_adapter(folder: Path) -> Path:
    from phi3lora.config import JobConfig
    from phi3lora.training import train

    identity = REPO.parent / "shared" / "datasets" / "identity.json"
    config = JobConfig().with_overrides(
        [f"data.path={identity}", "model.base_model=demo", "max_steps=3", "eval_size=0", "save_strategy=no"])
    train(config, folder, log=lambda *_: None)
    return folder


def timed(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Warm every run up once, then time them interleaved (order rotating each repeat), so that drift in the
    machine's speed (other processes, frequency) hits all of them alike rather than whichever ran last."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    names = list(fns)
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="adapter folder (default: train 3 steps into a temp folder)")
    parser.add_argument("--base-model", default=None, help="default: the adapter's base (demo)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or train_adapter(Path(tmp) / "adapter")
        sbs = SideBySide(args.base_model)
        sbs.add_adapter("adapted", adapter)
        model, tokenizer = sbs.model, sbs.tokenizer
        n = args.max_new_tokens
        prompt = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
        common = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "temperature": None, "top_p": None,
                  "top_k": None, "eos_token_id": stop_token_ids(tokenizer), "pad_token_id": tokenizer.pad_token_id}

        def encode(rows: int):
            return tokenizer([prompt] * rows, return_tensors="pt", add_special_tokens=False).to(model.device)

        one, two = encode(1), encode(2)

        @torch.inference_mode()
        def batched():
            out = model.generate(**two, adapter_names=[BASE, "adapted"], **common)
            assert out.shape[1] - two["input_ids"].shape[1] == n

        @torch.inference_mode()
        def sequential():
            with model.disable_adapter():
                a = model.generate(**one, **common)
            model.set_adapter("adapted")
            b = model.generate(**one, **common)
            assert a.shape[1] - one["input_ids"].shape[1] == n == b.shape[1] - one["input_ids"].shape[1]

        def streamed():
            steps = sum(1 for _ in sbs.stream([BASE, "adapted"], [CONVERSATION] * 2, n, min_new_tokens=n))
            assert steps == n

        runs = timed({"batched": batched, "sequential": sequential, "streamed": streamed}, args.repeats)
        two_rows_cost = linear_cost_of_two_rows(model)
        sbs.release()

    medians = {name: statistics.median(t) for name, t in runs.items()}
    result = {
        "device": str(model.device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "max_new_tokens": n, "repeats": args.repeats, "adapter": str(args.adapter or "trained 3 steps (temp)"),
        "times_s": runs, "median_s": medians,
        "ratio_batched_over_sequential": medians["batched"] / medians["sequential"],
        "ratio_streamed_over_sequential": medians["streamed"] / medians["sequential"],
        "linear_two_rows_over_one": two_rows_cost,
    }
    print(f"\ndevice {result['device']}, torch threads {result['torch_threads']}, "
          f"{n} new tokens per column, median of {args.repeats}")
    print(f"{'run':<12}{'median s':>10}{'min s':>8}{'max s':>8}{'ms/step':>9}{'vs sequential':>15}")
    for name, median in medians.items():
        t = runs[name]
        print(f"{name:<12}{median:>10.3f}{min(t):>8.3f}{max(t):>8.3f}{1000 * median / n:>9.2f}"
              f"{median / medians['sequential']:>15.2f}")
    print(f"the model's linear layers on a decoding step of 2 rows cost {two_rows_cost:.2f}x a step of 1 row "
          "(batching saves only what is not matrix products when this is near 2)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


@torch.inference_mode()
def linear_cost_of_two_rows(model, repeats: int = 300) -> float:
    """Time of every linear layer of the model on one decoding step of 2 rows over the same on 1 row. Near 1,
    a batch computes two columns for the price of one; near 2 (small-row matrix products on some CPUs' BLAS),
    it saves only the per-step overhead outside the products."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.dim() == 2]
    seconds = {}
    for rows in (1, 2):
        inputs = [torch.randn(rows, 1, w.shape[1], dtype=w.dtype, device=w.device) for w in weights]
        for w, x in zip(weights, inputs):
            torch.nn.functional.linear(x, w)  # warm up
        synchronize = torch.cuda.synchronize if weights[0].is_cuda else (lambda: None)
        synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            for w, x in zip(weights, inputs):
                torch.nn.functional.linear(x, w)
        synchronize()
        seconds[rows] = time.perf_counter() - start
    return round(seconds[2] / seconds[1], 2)


if __name__ == "__main__":
    main()
