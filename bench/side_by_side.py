"""Benchmark: base + adapter in ONE mixed batch vs two sequential generations of the same length.

    python bench/side_by_side.py [--adapter DIR] [--max-new-tokens 64] [--repeats 5] [--out result.json]

Without --adapter, a 3-step adapter is trained on phi3lora/samples/identity.jsonl into a temporary folder (demo model).
Every generation is forced to exactly --max-new-tokens new tokens (min_new_tokens = max_new_tokens), greedy.
Rows:
  streamed          what the Compare tab runs: SideBySide.stream, one generate with peft's mixed batch
                    (adapter_names=["__base__", "adapted"]) and, on the CPU, few_row_linears; on the model thread
                    (model_thread.py), every row's text decoded and queued at every step
  batched           the same generate without the streamer (on the model thread, as are the rows below)
  peft_batched      the same generate without few_row_linears: peft's mixed batch as it comes
  sequential        two generates, batch of 1 each: base with the adapter disabled, then with the adapter active
                    (the plain single-adapter path, no per-row routing: the fastest way to do one column at a time)
  sequential_few_rows  the same under few_row_linears: it shows that form gives one row nothing, so the
                    baseline is not the slower for lacking it
Each is warmed up once, then all are timed --repeats times, interleaved; medians are reported. The target:
batched and streamed each at most TARGET of sequential.
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

from phi3lora.inference.few_rows import few_row_linears
from phi3lora.inference.model_thread import on_model_thread
from phi3lora.modeling import stop_token_ids
from phi3lora.inference.engine import BASE, SideBySide
from phi3lora.job_builder import override

CONVERSATION = [{"role": "user", "content": "Who are you?"}]
TARGET = 0.7  # batched (and streamed) time over sequential time, at most


def train_adapter(folder: Path) -> Path:
    from phi3lora.config import JobConfig
    from phi3lora.training.trainer import train

    identity = REPO / "phi3lora" / "samples" / "identity.jsonl"  # the project's own sample
    config = override(JobConfig(),
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
        # on the model thread too: a main thread that had run torch would hold an OpenMP team of its own
        adapter = args.adapter or on_model_thread(train_adapter, Path(tmp) / "adapter")
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
        def peft_batched():
            out = model.generate(**two, adapter_names=[BASE, "adapted"], **common)
            assert out.shape[1] - two["input_ids"].shape[1] == n

        @torch.inference_mode()
        def sequential():
            with model.disable_adapter():
                a = model.generate(**one, **common)
            model.set_adapter("adapted")
            b = model.generate(**one, **common)
            assert a.shape[1] - one["input_ids"].shape[1] == n == b.shape[1] - one["input_ids"].shape[1]

        def with_few_rows(fn):
            def run():
                with few_row_linears(model):
                    fn()
            return run

        def on_the_model_thread(fn):  # where stream generates: this process's one OpenMP team (model_thread.py)
            return lambda: on_model_thread(fn)

        def streamed():
            steps = sum(1 for _ in sbs.stream([BASE, "adapted"], [CONVERSATION] * 2, n, min_new_tokens=n))
            assert steps in (n, n + 1)  # + 1: the final texts, where they differ from the last step's

        runs = timed({"streamed": streamed, **{name: on_the_model_thread(fn) for name, fn in {
            "batched": with_few_rows(peft_batched), "peft_batched": peft_batched, "sequential": sequential,
            "sequential_few_rows": with_few_rows(sequential)}.items()}}, args.repeats)
        two_rows_cost = on_model_thread(linear_cost_of_two_rows, model)
        sbs.release()

    medians = {name: statistics.median(t) for name, t in runs.items()}
    result = {
        "device": str(model.device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "max_new_tokens": n, "repeats": args.repeats, "adapter": str(args.adapter or "trained 3 steps (temp)"),
        "times_s": runs, "median_s": medians,
        "ratio_over_sequential": {name: median / medians["sequential"] for name, median in medians.items()},
        "linear_two_rows_over_one": two_rows_cost,
    }
    print(f"\ndevice {result['device']}, torch threads {result['torch_threads']}, "
          f"{n} new tokens per column, median of {args.repeats}")
    print(f"{'run':<20}{'median s':>10}{'min s':>8}{'max s':>8}{'ms/step':>9}{'vs sequential':>15}")
    for name, median in medians.items():
        t = runs[name]
        print(f"{name:<20}{median:>10.3f}{min(t):>8.3f}{max(t):>8.3f}{1000 * median / n:>9.2f}"
              f"{median / medians['sequential']:>15.2f}")
    ratios = result["ratio_over_sequential"]
    for name in ("batched", "streamed"):
        verdict = "meets" if ratios[name] <= TARGET else "MISSES"
        print(f"{name} / sequential = {ratios[name]:.2f}: {verdict} the target of <= {TARGET}")
    print(f"the model's linear layers on a decoding step of 2 rows cost {two_rows_cost['f_linear']:.2f}x a step "
          f"of 1 row as F.linear computes them, {two_rows_cost['few_row_form']:.2f}x in few_row_linears' form")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


@torch.inference_mode()
def linear_cost_of_two_rows(model, repeats: int = 300) -> dict[str, float]:
    """Time of every linear layer of the model on one decoding step of 2 rows over the same on 1 row, as
    F.linear computes it and in few_row_linears' form. Near 1, a batch computes two columns for the price of
    one; near 2 (F.linear on a few rows on some CPUs' BLAS), it saves only the per-step work outside them."""
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    synchronize = torch.cuda.synchronize if linears[0].weight.is_cuda else (lambda: None)

    def seconds(rows: int) -> float:
        inputs = [torch.randn(rows, 1, m.in_features, dtype=m.weight.dtype, device=m.weight.device) for m in linears]
        for m, x in zip(linears, inputs):
            m(x)  # warm up
        synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            for m, x in zip(linears, inputs):
                m(x)
        synchronize()
        return time.perf_counter() - start

    one, two = seconds(1), seconds(2)
    with few_row_linears(model):
        two_few = seconds(2)
    return {"f_linear": round(two / one, 2), "few_row_form": round(two_few / one, 2)}


if __name__ == "__main__":
    main()
