"""Benchmark: `python -m phi3lora validate FILE --json` from start to report, against the same command in a process
that imports torch first (what every validate cost before it stopped loading torch), measured in the same run.

    python bench/validate_start.py [--repeats N] [--file FILE]

Both run the whole command (reading the file, resolving the job's max length, loading the tokenizer, counting
every conversation's tokens) on the project's own bench/data/long_answers.jsonl, alternating, with no GPU; the
figure is the median wall time of each and their ratio (target: at most 0.5, half the time or less), with the
median CPU time (user + system) beside it, steadier on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "bench" / "data" / "long_answers.jsonl"
TARGET = 0.5
TORCH_FIRST = "import sys, runpy, torch; sys.argv[0] = 'phi3lora'; runpy.run_module('phi3lora', run_name='__main__')"


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds (user + system: steadier than wall time on a shared machine)."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"})
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):  # 1: the file has problems, still a full report
        raise RuntimeError(f"{command} failed: {done.stderr[-2000:]}")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--file", type=Path, default=SAMPLE)
    args = parser.parse_args(argv)
    validate = ["validate", str(args.file), "--json"]
    ours_cmd = [sys.executable, "-m", "phi3lora", *validate]
    baseline_cmd = [sys.executable, "-c", TORCH_FIRST, *validate]
    timed(ours_cmd)  # warm the file cache once, for both
    ours, baseline = [], []
    for _ in range(args.repeats):
        baseline.append(timed(baseline_cmd))
        ours.append(timed(ours_cmd))
    result = {"file": args.file.name, "repeats": args.repeats}
    for key, index in (("median_s", 0), ("median_cpu_s", 1)):
        result[key] = {"torch_first": round(statistics.median(b[index] for b in baseline), 2),
                       "validate": round(statistics.median(o[index] for o in ours), 2)}
    result["ratio"] = round(result["median_s"]["validate"] / result["median_s"]["torch_first"], 3)
    print(f"validate {args.file.name}: {result['median_s']['validate']} s vs {result['median_s']['torch_first']} s "
          f"with torch imported first (median of {args.repeats}): ratio {result['ratio']} (target <= {TARGET}); "
          f"CPU {result['median_cpu_s']['validate']} s vs {result['median_cpu_s']['torch_first']} s")
    return result


if __name__ == "__main__":
    main()
