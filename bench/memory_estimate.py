"""The memory estimate (phi3lora/training/memory_estimate.py) against the measured peak of real training runs.

    python bench/memory_estimate.py [--steps 2] [--only demo|real-shape|overhead] [--out result.json]
    python bench/memory_estimate.py --device-check MODEL [--set KEY=VALUE ...] --result R.json   (bench/gpu_check.py)

Each case trains `python -m phi3lora train` in a fresh process, over conversations longer than max_length (so every
batch is batch x max_length tokens, the estimate's worst case), and reads the process's peak resident set
(VmHWM, /proc/self/status) once it is done; the estimate is computed for the very job it ran (its config.yaml):
  overhead    the demo model with 0 decoder layers and a batch of one short row: what the libraries and the trainer
              take whatever the model (the estimate's CPU_FIXED_OVERHEAD)
  demo        the embedded demo model at its defaults (batch 8, max_length 512, no gradient checkpointing)
  real-shape  Phi-3-mini's widths and vocabulary (tests/real_shapes.py, the real tokenizer from ../shared) cut to
              2 decoder layers, batch 2 x 256 tokens, with and without gradient checkpointing, and QLoRA
The ratio is estimate / measured; the target is within 20% (0.8 to 1.2).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
GB = 1024**3
TARGET = (0.8, 1.2)
WORDS = "one two three four five six seven eight nine ten eleven twelve".split()


def long_conversations(path: Path, count: int, words: int) -> Path:
    """`count` conversations of about `words` words each: longer than any max_length used here."""
    with open(path, "w") as out:
        for n in range(count):
            answer = " ".join(WORDS[(n + k) % len(WORDS)] for k in range(words))
            out.write(json.dumps({"messages": [{"role": "user", "content": f"Count on from {n}."},
                                               {"role": "assistant", "content": answer}]}) + "\n")
    return path


def measure(model: str, data: Path, work: Path, settings: list[str]) -> dict:
    """Train in a fresh process; its peak RSS, and the estimate of the job it ran."""
    from phi3lora.job_builder import load_job
    from phi3lora.training.memory_estimate import estimate

    output = work / "run"
    code = ("import sys, runpy; sys.argv = ['phi3lora', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('phi3lora', run_name='__main__')\n"
            "finally:\n    print('VmHWM', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    command = [sys.executable, "-c", code, "train", "--model", model, "--data", str(data), "--output", str(output),
               *[f"--set={s}" for s in ["eval_size=0", "eval_strategy=no", "save_strategy=no", "logging_steps=1",
                                        *settings]]]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PHI3LORA_TRAINER_NICE": "0"})
    peak = [line for line in done.stdout.splitlines() if line.startswith("VmHWM")]
    if done.returncode or not peak:
        raise RuntimeError(f"training failed: {(done.stderr or done.stdout)[-1500:]}")
    measured = int(peak[-1].split()[1]) * 1024
    found = estimate(load_job(output / "config.yaml"), "cpu")
    return {"settings": settings, "measured_gb": round(measured / GB, 3), "estimate_gb": round(found.total / GB, 3),
            "ratio": round(found.total / measured, 3), "parts_gb": found.to_dict()["parts_gb"]}


def zero_layer_demo(folder: Path) -> Path:
    """The demo model's files with no decoder layers: the run's peak is then the libraries and the trainer."""
    import shutil

    from phi3lora.base_model import DEMO_MODEL_DIR
    from safetensors.torch import load_file, save_file

    shutil.copytree(DEMO_MODEL_DIR, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 0}))
    weights = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if ".layers." not in k}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def cases(work: Path, only: list[str] | None, steps: int) -> dict[str, dict]:
    data = long_conversations(work / "long.jsonl", 48, 700)
    common = [f"max_steps={steps}"]
    results = {}
    if not only or "overhead" in only:
        model = zero_layer_demo(work / "zero-layers")
        results["overhead (0-layer demo)"] = measure(str(model), data, work / "overhead",
                                                     [*common, "per_device_train_batch_size=1", "max_length=16",
                                                      "target_modules=[embed_tokens]"])
    if not only or "demo" in only:
        results["demo model, defaults"] = measure("demo", data, work / "demo", common)
    if not only or "real-shape" in only:
        from real_shapes import TOKENIZER_DIR, write_model_folder

        if not (TOKENIZER_DIR / "tokenizer.json").is_file():
            results["real-shape"] = {"skipped": f"the real tokenizer is expected at {TOKENIZER_DIR}"}
            return results
        model = write_model_folder(work / "mini-2-layers", "mini-4k", layers=2)
        for checkpointing in ("false", "true"):
            results[f"Phi-3-mini widths, 2 layers, checkpointing {checkpointing}"] = measure(
                str(model), data, work / f"real-{checkpointing}",
                [*common, "per_device_train_batch_size=2", "max_length=256", f"gradient_checkpointing={checkpointing}"])
        results["Phi-3-mini widths, 2 layers, QLoRA, checkpointing true"] = measure(
            str(model), data, work / "real-qlora",
            [*common, "per_device_train_batch_size=2", "max_length=256", "gradient_checkpointing=true",
             "load_in_4bit=true"])
    return results


def device_check(base: str, work: Path, settings: list[str], steps: int) -> dict:
    """The GPU check's part (bench/gpu_check.py): one run in this process on its device, the estimate against
    torch.cuda.max_memory_allocated on a GPU (less the estimate's fixed overhead: the CUDA context is not in that
    figure), or against the peak RSS on a CPU (the dry run)."""
    import torch

    from phi3lora.job_builder import assignments_layer, build_job, resolve_job, values_layer
    from phi3lora.training import memory_estimate as estimator
    from phi3lora.training.trainer import train

    work.mkdir(parents=True, exist_ok=True)
    data = long_conversations(work / "long.jsonl", 16, 2000)
    config, _ = resolve_job(build_job(
        values_layer({"model.base_model": base, "data.path": str(data)}),
        assignments_layer(["eval_size=0", "eval_strategy=no", "save_strategy=no", "logging_steps=1",
                           f"max_steps={steps}", *settings])))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    found = estimator.estimate(config, device)
    train(config, work / "run", log=lambda *_: None)
    if device == "cuda":
        measured = torch.cuda.max_memory_allocated()
        compared = found.total - found.parts["fixed overhead (libraries)"]
    else:
        measured = int([line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]) * 1024
        compared = found.total
    return {"device": device, "settings": settings, "estimate_gb": round(compared / GB, 3),
            "measured_gb": round(measured / GB, 3), "ratio": round(compared / measured, 3),
            "measured_as": "torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS (VmHWM)",
            "parts_gb": found.to_dict()["parts_gb"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", action="append", choices=["overhead", "demo", "real-shape"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device-check", metavar="BASE", help="the GPU check's part: one run of BASE on this "
                        "process's device, with --set settings; its result to --result")
    parser.add_argument("--set", dest="settings", action="append", default=[])
    parser.add_argument("--result", type=Path)
    args = parser.parse_args(argv)
    if args.device_check:
        with tempfile.TemporaryDirectory(prefix="phi3lora-memory-") as work:
            result = device_check(args.device_check, Path(work), args.settings, args.steps)
        args.result.write_text(json.dumps(result, indent=2))
        print(json.dumps(result))
        return result
    with tempfile.TemporaryDirectory(prefix="phi3lora-memory-") as work:
        results = cases(Path(work), args.only, args.steps)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(f"\n{'case':<52}{'estimate':>10}{'measured':>10}{'ratio':>7}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<52} skipped: {r['skipped']}")
        else:
            print(f"{name:<52}{r['estimate_gb']:>8.2f}GB{r['measured_gb']:>8.2f}GB{r['ratio']:>7.2f}")
    return results


if __name__ == "__main__":
    main()
