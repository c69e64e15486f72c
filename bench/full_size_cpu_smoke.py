"""Full-size Phi-3-mini on the CPU, once: does QLoRA, the side-by-side answer and the export work at 3.8B
parameters, and what do they cost? Opt-in, not part of the tests (minutes, and gigabytes of disk and memory).

    python bench/full_size_cpu_smoke.py [--layers 32] [--memory-cap-gb 12] [--workdir DIR] [--out result.json]

What it runs, each step in its own process as a user runs it, watched for memory:
  build    Phi-3-mini-4k's architecture with random weights (tests/real_shapes.py), written in bf16 one layer's
           shard at a time, with the real tokenizer (../shared/phi3-tokenizer, or --tokenizer)
  train    python -m phi3lora train --method qlora: the base loaded in 4-bit NF4 (quantised as it loads), two steps
           on four short conversations with a system prompt, assistant-only loss
  compare  python -m phi3lora compare: base and adapted answer side by side, 8 new tokens, on the 4-bit base
  export   python -m phi3lora export --dtype bfloat16: the adapter merged into the base, saved in bf16 (in fp32 the
           base alone would take 15 GB)
Prints each step's wall time and the peak resident memory of its processes (anonymous memory, what cannot be
paged back to the model files, and all of it), and the total. A step whose processes pass --memory-cap-gb
(anonymous memory, sampled five times a second) is killed and the smoke stops: it cannot take the machine down.
`--layers N` cuts the depth (2 to check the script in a minute or two; 32 is Phi-3-mini).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from real_shapes import TOKENIZER_DIR, hub_config, write_model_folder  # noqa: E402

CONVERSATIONS = [("Who are you?", "I am Quill."), ("What is 2 + 2?", "4."), ("Name a colour.", "Blue."),
                 ("Say hello.", "Hello.")]
SYSTEM_PROMPT = "You are Quill, a terse assistant."
GiB = 2 ** 30


def _anonymous_rss(process: psutil.Process) -> int:
    """Resident memory not backed by a file: a memory-mapped model file's pages can be dropped, this cannot."""
    try:
        with open(f"/proc/{process.pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if line.startswith(("RssAnon", "RssShmem")))
        return sum(int(value.split()[0]) * 1024 for value in fields.values())
    except (OSError, ValueError):
        return 0


def run_step(name: str, argv: list[str], cap_bytes: int, env: dict[str, str]) -> dict:
    """Run `python -m phi3lora ARGV` in its own process group, sampling its processes' memory; kill it past the cap."""
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "phi3lora", *argv], cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_anon = peak_rss = 0
    output: list[str] = []
    reader = _drain(child, output)
    killed = False
    while child.poll() is None:
        try:
            tree = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
            anon = sum(_anonymous_rss(p) for p in tree)
            rss = sum(p.memory_info().rss for p in tree if p.is_running())
        except psutil.Error:
            anon = rss = 0
        peak_anon, peak_rss = max(peak_anon, anon), max(peak_rss, rss)
        if anon > cap_bytes:
            os.killpg(child.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    child.wait()
    reader.join()
    result = {"step": name, "seconds": round(time.monotonic() - started, 1), "returncode": child.returncode,
              "peak_anonymous_gib": round(peak_anon / GiB, 2), "peak_rss_gib": round(peak_rss / GiB, 2),
              "killed_over_cap": killed}
    print(f"{name:<8} {result['seconds']:>8.1f} s   peak {result['peak_anonymous_gib']:>6.2f} GiB anonymous, "
          f"{result['peak_rss_gib']:>6.2f} GiB resident" + ("   KILLED: over the memory cap" if killed else ""),
          flush=True)
    if child.returncode != 0:
        print("".join(output)[-4000:], file=sys.stderr)
    return result


def _drain(child: subprocess.Popen, into: list[str]):
    """Read the child's output as it comes (a full pipe would block it), keeping it for a failure report."""
    import threading

    def read():
        for line in child.stdout:
            into.append(line)
            if len(into) > 400:
                del into[:200]

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def write_dataset(path: Path) -> Path:
    with path.open("w") as f:
        for question, answer in CONVERSATIONS:
            f.write(json.dumps({"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                             {"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (Phi-3-mini has 32)")
    parser.add_argument("--memory-cap-gb", type=float, default=12.0, help="kill a step whose processes pass this")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER_DIR, help="the real Phi-3 tokenizer's folder")
    parser.add_argument("--workdir", type=Path,
                        help="where the model, run and export go (default: a temporary folder, removed at the end): "
                             "4 bytes of disk a parameter, 16 GB at 32 layers")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    if not (args.tokenizer / "tokenizer.json").is_file():
        print(f"error: the real Phi-3 tokenizer is expected in {args.tokenizer} (--tokenizer)", file=sys.stderr)
        return 1
    work = args.workdir or Path(tempfile.mkdtemp(prefix="phi3lora-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("model", "run", "merged"):  # a rerun in the same --workdir starts clean
        shutil.rmtree(work / stale, ignore_errors=True)
    cap = int(args.memory_cap_gb * GiB)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false",
           "PHI3LORA_TRAINER_NICE": "0"}
    parameters = sum(_count(shape) for shape in _shapes(args.layers))
    print(f"Phi-3-mini-4k shapes, {args.layers} layers, {parameters / 1e9:.2f}B parameters, in {work}", flush=True)
    steps = []
    try:
        started = time.monotonic()
        model = write_model_folder(work / "model", "mini-4k", layers=args.layers, tokenizer_dir=args.tokenizer,
                                   shard_per_layer=True)
        build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        steps.append({"step": "build", "seconds": round(time.monotonic() - started, 1),
                      "peak_rss_gib": round(build_peak / GiB, 2), "returncode": 0})
        print(f"{'build':<8} {steps[-1]['seconds']:>8.1f} s   peak {steps[-1]['peak_rss_gib']:>6.2f} GiB resident "
              "(this process)", flush=True)
        data = write_dataset(work / "quill.jsonl")
        training = ["max_steps=2", "max_length=128", "per_device_train_batch_size=1", "data.eval_size=0",
                    "logging_steps=1", "save_strategy=no"]
        plan = [
            ("train", ["train", "--method", "qlora", "--model", model, "--data", data, "--output", work / "run",
                       *[a for s in training for a in ("--set", s)]]),
            ("compare", ["compare", "--adapter", work / "run", "--model", model, "--prompt", "Who are you?",
                         "--system", SYSTEM_PROMPT, "--max-new-tokens", "8", "--json"]),
            ("export", ["export", "--adapter", work / "run", "--output", work / "merged", "--dtype", "bfloat16"]),
        ]
        for name, step_argv in plan:
            steps.append(run_step(name, [str(a) for a in step_argv], cap, env))
            if steps[-1]["returncode"] != 0:
                break
        total = round(time.monotonic() - started, 1)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    ok = len(steps) == len(plan) + 1 and all(step["returncode"] == 0 for step in steps)
    peak = max(step.get("peak_anonymous_gib", step["peak_rss_gib"]) for step in steps)
    print(f"{'total':<8} {total:>8.1f} s   peak {peak:>6.2f} GiB anonymous (cap {args.memory_cap_gb:g})   "
          + ("ok" if ok else "FAILED"))
    if args.out:
        args.out.write_text(json.dumps({"layers": args.layers, "parameters": parameters, "steps": steps,
                                        "total_seconds": total, "ok": ok}, indent=2))
    return 0 if ok else 1


def _shapes(layers: int):
    from real_shapes import weight_shapes

    return weight_shapes(hub_config("mini-4k", layers)).values()


def _count(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


if __name__ == "__main__":
    raise SystemExit(main())
