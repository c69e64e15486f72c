"""Every figure phi3lora claims, each a ratio against a baseline measured in the same run.

    python bench/run.py [--quick] [--gpu] [--out FILE.json]

  training      useful tokens/s and peak memory, ours vs the Phi-3 Cookbook's LoRA recipe   (bench/training.py)
  side by side  base + adapter in one mixed batch vs two sequential generations              (bench/side_by_side.py)
  app           /run_status latency while training vs idle; cold start vs a bare Gradio app (bench/app_figures.py)
  validate      `validate FILE` start to report vs the same with torch imported first     (bench/validate_start.py)
  memory        the memory estimate vs the measured peak RSS of real runs, demo and real-shape (bench/memory_estimate.py)
  onnx          generation with the int4 ONNX Runtime GenAI export vs torch + adapter, CPU (bench/onnx_export.py;
                skipped without requirements-export.txt)

--quick runs fewer steps and repeats (a few minutes on two CPU cores); --gpu benchmarks Phi-3-mini's size on the
GPU instead of the demo model on the CPU (install requirements-gpu.txt first; bench/gpu_check.sh does, and checks
the rest of the app on the GPU too). Prints one table and writes it, with the machine, as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import app_figures  # noqa: E402
import side_by_side  # noqa: E402
import training  # noqa: E402
import validate_start  # noqa: E402
import memory_estimate  # noqa: E402

# (variant, what to compare, at least / at most, bound): the targets, checked on the printed ratios.
# Memory is compared per useful token: ours packs 2048-token rows, the Cookbook pads 4 conversations a step.
TRAINING_TARGETS = {
    False: [("ours", "speed_vs_cookbook", ">=", 1.5)],
    True: [("ours LoRA", "speed_vs_cookbook", ">=", 1.8), ("ours LoRA", "memory_per_token_vs_cookbook", "<=", 0.6),
           ("ours QLoRA", "speed_vs_cookbook", ">=", 1.5)],
}


def row(figure: str, baseline: float, ours: float, unit: str, target: str | None = None, notes: str = "") -> dict:
    ratio = ours / baseline if baseline else float("nan")
    met = None
    if target:
        sign, bound = target.split()
        met = ratio >= float(bound) if sign == ">=" else ratio <= float(bound)
    return {"figure": figure, "baseline": baseline, "ours": ours, "unit": unit, "ratio": round(ratio, 3),
            "target": target, "met": met, "notes": notes}


def training_rows(quick: bool, gpu: bool, peak_tflops: float | None = None) -> tuple[list[dict], list[dict]]:
    variants = training.run(steps=10 if quick else training.DEFAULT_STEPS, gpu=gpu, peak_tflops=peak_tflops)
    by_name = {v["variant"]: v for v in variants}
    rows = []
    for name, v in by_name.items():
        if name.startswith("cookbook") or "error" in v:
            continue
        reference = by_name["cookbook QLoRA" if "QLoRA" in name else "cookbook" + (" LoRA" if gpu else "")]
        if "error" in reference:
            continue
        targets = {key: f"{sign} {bound}" for variant, key, sign, bound in TRAINING_TARGETS[gpu] if variant == name}
        mfu = f", MFU {100 * v['mfu']:.1f}%" if v.get("mfu") else ""
        rows.append(row(f"training tokens/s: {name}", reference["tokens_per_second"], v["tokens_per_second"],
                        "tokens/s", targets.get("speed_vs_cookbook"), f"{v['steps']} steps{mfu}"))
        if v.get("memory_per_token_mib") and reference.get("memory_per_token_mib"):  # a GPU's: see training.py
            rows.append(row(f"training memory per token: {name}", reference["memory_per_token_mib"],
                            v["memory_per_token_mib"], "MiB/token (cuda)", targets.get("memory_per_token_vs_cookbook"),
                            f"peak {v['peak_memory_gb']} GB vs {reference['peak_memory_gb']} GB"))
    return rows, variants


def side_by_side_rows(quick: bool) -> tuple[list[dict], dict]:
    result = side_by_side.main(["--max-new-tokens", "64", "--repeats", "3" if quick else "9"])
    medians, target = result["median_s"], f"<= {side_by_side.TARGET}"
    setting = f"{result['max_new_tokens']} new tokens per column, median of {result['repeats']}"
    return [
        row("generate base + adapter: one mixed batch vs sequential", medians["sequential"], medians["batched"], "s",
            target, setting),
        row("the same, streamed into the two columns", medians["sequential"], medians["streamed"], "s", target,
            "SideBySide.stream, what the Compare tab runs: texts decoded and queued each step"),
        row("the same, peft's mixed batch without few_row_linears", medians["sequential"], medians["peft_batched"],
            "s", None, "F.linear on 2 rows"),
    ], result


def memory_rows(quick: bool) -> tuple[list[dict], dict]:
    """Estimate / measured peak RSS, each within 20% (memory_estimate.TARGET); the baseline is the measurement."""
    results = memory_estimate.main(["--steps", "1" if quick else "2"])
    low, high = memory_estimate.TARGET
    rows = []
    for name, r in results.items():
        if "skipped" in r:
            continue
        found = row(f"memory estimate vs peak RSS: {name}", r["measured_gb"], r["estimate_gb"], "GB", None,
                    ", ".join(r["settings"]))
        found.update(target=f"{low}..{high}", met=low <= found["ratio"] <= high)
        rows.append(found)
    return rows, results


def onnx_rows(quick: bool) -> tuple[list[dict], dict | None]:
    import importlib.util

    if importlib.util.find_spec("onnxruntime_genai") is None:
        print("onnx: skipped (pip install -r requirements-export.txt)")
        return [], None
    import onnx_export  # bench/onnx_export.py, imported here: it needs the optional packages

    result = onnx_export.main(["--repeats", "3" if quick else "5"])
    tps = result["tokens_per_second"]
    return [row("generate on the CPU: int4 ONNX Runtime GenAI export vs torch + adapter", tps["torch_adapter"],
                tps["onnx_int4"], "tokens/s", None, f"{result['max_new_tokens']} tokens, {result['threads']} thread; "
                f"torch merged {tps['torch_merged']} tokens/s")], result


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "cpu": _cpu_name(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_table(rows: list[dict]) -> None:
    print(f"\n{'figure':<58}{'baseline':>11}{'ours':>11}  {'unit':<22}{'ratio':>7}  {'target':<8} met")
    for r in rows:
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        print(f"{r['figure']:<58}{r['baseline']:>11.4g}{r['ours']:>11.4g}  {r['unit']:<22}{r['ratio']:>7.2f}  "
              f"{r['target'] or '':<8} {met}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--gpu", action="store_true", help="Phi-3-mini's size on the GPU (training)")
    parser.add_argument("--peak-tflops", type=float, help="with --gpu: the GPU's peak bf16 TFLOPS (default: by name)")
    parser.add_argument("--only", choices=["training", "side_by_side", "app", "validate", "onnx", "memory"],
                        action="append", help="run only these parts (repeatable)")
    parser.add_argument("--out", type=Path, help="write the table, the details and the machine as JSON")
    args = parser.parse_args(argv)
    parts = args.only or ["training", "side_by_side", "app", "validate", "onnx", "memory"]
    started = time.time()
    rows, details = [], {}
    if "training" in parts:
        training_table, details["training"] = training_rows(args.quick, args.gpu, args.peak_tflops)
        rows += training_table
        training.print_table(details["training"])
    if "side_by_side" in parts:
        sbs_table, details["side_by_side"] = side_by_side_rows(args.quick)
        rows += sbs_table
    if "app" in parts:
        rows += app_figures.run(quick=args.quick)
    if "validate" in parts:
        details["validate"] = result = validate_start.main(["--repeats", "3" if args.quick else "5"])
        rows.append(row("validate FILE: start to report vs torch imported first", result["median_s"]["torch_first"],
                        result["median_s"]["validate"], "s", f"<= {validate_start.TARGET}",
                        f"{result['file']}; CPU {result['median_cpu_s']['validate']} s vs "
                        f"{result['median_cpu_s']['torch_first']} s"))
    if "onnx" in parts:
        onnx_table, details["onnx"] = onnx_rows(args.quick)
        rows += onnx_table
    if "memory" in parts:
        memory_table, details["memory"] = memory_rows(args.quick)
        rows += memory_table
    print_table(rows)
    report = {"command": " ".join(["python bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "seconds": round(time.time() - started), "rows": rows, "details": details}
    print(f"\nmachine: {report['machine']}; {report['seconds']} s")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
