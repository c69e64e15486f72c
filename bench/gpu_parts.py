"""The GPU check's parts that are not a training variant, each run as its own process by bench/gpu_check.py:

    python bench/gpu_parts.py probe   --result R.json
    python bench/gpu_parts.py compare --base MODEL --adapter NAME=DIR ... [--max-new-tokens 32] --result R.json
    python bench/gpu_parts.py export  --adapter DIR --out DIR --result R.json
    python bench/gpu_parts.py oom     --base MODEL --home DIR [--batch 64] [--memory-cap-gb G] --result R.json

probe    what this machine has: torch, the GPU (name, memory, bf16), and each package the check needs, imported
compare  base + every adapter streamed side by side in one mixed batch through phi3lora.inference.engine.SideBySide
         (what the Compare tab runs), every column forced to --max-new-tokens tokens
export   phi3lora.deploy.export.merge_and_save, the merge behind `python -m phi3lora export` and the Export button;
         the merged model is checked, then deleted (it is as large as the base)
oom      a background run (`python -m phi3lora runs start` / `runs wait`, as the app starts one) with a batch far too
         large to fit: the run must fail with phi3lora's out-of-memory sentence and its 4-bit hint. On a CPU, the
         run's processes get --memory-cap-gb of address space, so the failed allocation is fast and harmless.
Each writes its result as JSON to --result; an exception leaves none, and the check reports the log's last error.
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
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import sample_data  # noqa: E402

PACKAGES = {"torch": "torch", "transformers": "transformers", "peft": "peft", "trl": "trl", "datasets": "datasets",
            "accelerate": "accelerate", "bitsandbytes": "bitsandbytes", "flash_attn": "flash-attn",
            "liger_kernel": "liger-kernel"}  # module: distribution
PROMPT = [{"role": "user", "content": "Who are you, and what can you do?"}]


def probe() -> dict:
    import importlib

    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "cuda_version": torch.version.cuda, "packages": {}}
    if info["cuda"]:
        free, total = torch.cuda.mem_get_info()
        info.update(device=torch.cuda.get_device_name(), memory_gb=round(total / 2**30, 1),
                    free_gb=round(free / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
                    gpus=torch.cuda.device_count())
    for module, distribution in PACKAGES.items():
        try:
            importlib.import_module(module)  # flash-attn's import loads its CUDA extension: a wrong build fails here
            info["packages"][distribution] = metadata.version(distribution)
        except Exception as error:  # noqa: BLE001 - missing or broken: say which and go on
            info["packages"][distribution] = f"unavailable ({type(error).__name__}: {str(error)[:120]})"
    return info


def compare(base: str, adapters: dict[str, str], max_new_tokens: int) -> dict:
    import torch

    from phi3lora.inference.engine import BASE, SideBySide

    started = time.perf_counter()
    engine = SideBySide(base)
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    columns = [BASE, *adapters]
    loaded = time.perf_counter()
    first, updates, texts = None, 0, []
    for texts in engine.stream(columns, [PROMPT] * len(columns), max_new_tokens=max_new_tokens,
                               min_new_tokens=max_new_tokens):  # random weights may say <|end|> at once
        updates += 1
        first = first or time.perf_counter()
    done = time.perf_counter()
    result = {"columns": columns, "max_new_tokens": max_new_tokens, "load_seconds": round(loaded - started, 1),
              "first_update_seconds": round((first or done) - loaded, 3), "seconds": round(done - loaded, 3),
              "updates": updates, "chars": [len(t) for t in texts],
              "tokens_per_second": round(len(columns) * max_new_tokens / (done - loaded), 1),
              "excerpts": [t[:40] for t in texts]}
    if torch.cuda.is_available():
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    engine.release()
    if updates < 2 or len(texts) != len(columns):
        raise RuntimeError(f"the side-by-side stream gave {updates} updates for {len(texts)} of {len(columns)} columns")
    return result


def export(adapter: str, out: Path) -> dict:
    from phi3lora.deploy.export import merge_and_save

    started = time.perf_counter()
    lines: list[str] = []
    merge_and_save(adapter, out, log=lines.append)
    config = json.loads((out / "config.json").read_text())
    weights = sorted(p.name for p in out.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    result = {"seconds": round(time.perf_counter() - started, 1), "weights": weights,
              "size_gb": round(size / 2**30, 2), "sliding_window": config.get("sliding_window"), "log": lines}
    shutil.rmtree(out)  # as large as the base: nothing after this needs it
    if not weights or (out / "adapter_config.json").exists():
        raise RuntimeError(f"the merged model in {out} is not a plain model: {weights}")
    return result


def oom(base: str, home: Path, batch: int, memory_cap_gb: float | None, timeout: float) -> dict:
    """A background run that cannot fit, through the project's own CLI and task machine."""
    from phi3lora.tasks.failures import OOM_HINT
    from phi3lora.tasks.machine import ACTIVE

    home.mkdir(parents=True, exist_ok=True)
    data = sample_data.write(home / "too_big.jsonl", sample_data.longest(batch))
    env = {**os.environ, "PHI3LORA_HOME": str(home), "PHI3LORA_BASE_MODEL": base, "PHI3LORA_TRAINER_NICE": "0",
           "PHI3LORA_CANCEL_GRACE": "5",
           "PHI3LORA_MEMORY_GB": "1000000"}  # past the estimate's refusal at start: this part wants the real failure
    cap = None
    if memory_cap_gb:  # address space, not RAM: few threads and malloc arenas, or they alone would reserve the cap
        env.update(OMP_NUM_THREADS="2", MALLOC_ARENA_MAX="2")
        limit = int(memory_cap_gb * 2**30)
        cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # noqa: E731 - inherited by the run

    def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "phi3lora", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, **kwargs)

    settings = [f"per_device_train_batch_size={batch}", "max_length=2048", "gradient_checkpointing=false",
                "packing=false", "use_liger_kernel=false", "eval_size=0", "max_steps=1", "save_strategy=no"]
    started = cli("runs", "start", "--data", str(data), "--model", base, "--method", "lora", "--json",
                  *[f"--set={s}" for s in settings], preexec_fn=cap)
    if started.returncode != 0:
        raise RuntimeError(f"runs start failed: {started.stderr.strip()[-300:]}")
    run_id = json.loads(started.stdout.strip().splitlines()[-1])["id"]
    began = time.time()
    signal.signal(signal.SIGTERM, _stopped)  # the check's time box: cancel the run on the way out
    info: dict = {}
    try:
        waited = cli("runs", "wait", run_id, "--timeout", str(timeout), "--json")
        info = json.loads(waited.stdout.strip().splitlines()[-1]) if waited.stdout.strip() else {}
    finally:
        if info.get("status") in (None, *ACTIVE):
            cli("runs", "cancel", run_id)  # never leave a detached trainer holding the GPU
    reason = info.get("reason") or ""
    result = {"run": run_id, "status": info.get("status"), "reason": reason, "batch": batch,
              "seconds": round(time.time() - began, 1), "memory_cap_gb": memory_cap_gb,
              "has_4bit_hint": OOM_HINT in reason}
    if info.get("status") != "failed" or "out of memory" not in reason or OOM_HINT not in reason:
        raise RuntimeError(f"expected phi3lora's out-of-memory failure, got {info.get('status')}: {reason[:300]}")
    return result


def _stopped(*_) -> None:
    raise TimeoutError("stopped by the check's time box")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["probe", "compare", "export", "oom"])
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--base")
    parser.add_argument("--adapter", action="append", default=[], help="compare: NAME=DIR; export: DIR")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--home", type=Path)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--memory-cap-gb", type=float)
    parser.add_argument("--timeout", type=float, default=150)
    args = parser.parse_args(argv)
    if args.part == "probe":
        result = probe()
    elif args.part == "compare":
        result = compare(args.base, dict(a.split("=", 1) for a in args.adapter), args.max_new_tokens)
    elif args.part == "export":
        result = export(args.adapter[0], args.out)
    else:
        result = oom(args.base, args.home, args.batch, args.memory_cap_gb, args.timeout)
    args.result.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
