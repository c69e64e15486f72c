"""Training throughput and memory: phi3lora's training path against the Phi-3 Cookbook's LoRA recipe.

    python bench/training.py [--steps 32] [--gpu] [--peak-tflops T] [--out result.json]

Every variant trains one epoch over the same conversations (the first 4 x --steps of bench/data/long_answers.jsonl,
the project's own sample: --steps steps at batch 4, fewer for packed rows) with the same seed, each in a fresh
process. The figure is useful tokens per second: the non-padding tokens the steps processed (the Trainer's
`include_num_input_tokens_seen="non_padding"`) over the seconds they took, from the end of the first step to the
end of the last (loading, tokenising and the first step's one-time warm-up are not counted; the first step's time
is reported on its own).

Memory, on a GPU: CUDA's max allocated, step by step. Variants process different numbers of tokens per step
(packing fills 2048-token rows; padded batches hold 4 conversations), so their peaks are not compared as they are:
the figure compared is memory per token, (the peak of a step - what was allocated before training) / the useful
tokens of that step, at the step with the highest peak. The peak itself is reported too. On the CPU: the
process's peak resident set, reported only (it cannot be reset per step).

cookbook  the Cookbook notebook's recipe as plain code: SFTTrainer on chat-template text, no packing, LoRA on
          `all-linear` (r 16, alpha 32, dropout 0.05), batch 4, maximum length 2048, gradient checkpointing,
          random batches padded to their longest conversation, loss on every token, AdamW (torch).
ours      phi3lora.training.trainer.prepare() at the same batch size and maximum length, every other setting as a user
          gets it: length-grouped batches, assistant-only loss, fused AdamW, gradient checkpointing off on the
          CPU (the demo model's default); plus the same with one choice changed, to measure each. On a GPU, ours
          adds flash-attention with padding-free packing (when flash-attn is installed) and Liger's kernels (when
          liger-kernel is), without gradient checkpointing for LoRA.
On the CPU the base is the demo model in fp32 (bf16 is ~35x slower there); with --gpu it is Phi-3-mini's
architecture (bench/phi3_mini.py: random weights, the real tokenizer where available) in bf16, LoRA and QLoRA,
built in a process of its own, and MFU is 4 x parameters x tokens per second over the GPU's peak bf16 FLOPS
(bench/gpu_peaks.py, by device name, or --peak-tflops).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path[:0] = [str(REPO), str(BENCH)]

import gpu_peaks  # noqa: E402
import sample_data  # noqa: E402

DATA = sample_data.SAMPLE
BATCH_SIZE, MAX_LENGTH = 4, 2048  # the Cookbook's
DEFAULT_STEPS = 32  # the whole sample at batch 4

# name: (recipe, --set overrides for ours). Ratios are against the cookbook row of the same method.
CPU_VARIANTS = {
    "cookbook": ("cookbook", []),
    "ours": ("ours", []),
    "ours, random batches": ("ours", ["group_by_length=false"]),
    "ours + gradient checkpointing": ("ours", ["gradient_checkpointing=true"]),
    "ours + packing (padding-free)": ("ours", ["packing=true"]),
    "ours, unfused AdamW": ("ours", ["optim=adamw_torch"]),
}


def gpu_variants(flash: bool, liger: bool, roomy: bool = True) -> dict[str, tuple[str, list[str]]]:
    """LoRA and QLoRA, cookbook and ours. Ours packs padding-free only with flash-attention's variable-length
    kernels; without flash-attn it keeps length-grouped padded batches (sdpa). Ours LoRA turns gradient
    checkpointing off only on a `roomy` GPU (60 GB or more): 8,192 tokens a step keep ~27 GB of activations."""
    fast = (["attn_implementation=flash_attention_2", "packing=true"] if flash else []) + \
        (["use_liger_kernel=true"] if liger else [])
    return {
        "cookbook LoRA": ("cookbook", []),
        "ours LoRA": ("ours", [*fast, *(["gradient_checkpointing=false"] if roomy else [])]),
        "cookbook QLoRA": ("cookbook", ["load_in_4bit=true"]),
        "ours QLoRA": ("ours", ["load_in_4bit=true", *fast]),
    }


# ---------------------------------------------------------------------------------------------- one variant


def cookbook_trainer(base: str, data: Path, steps: int, output_dir: Path, settings: list[str]):
    """The Cookbook's sample_finetune.py, trimmed to what affects speed: its training_config and peft_config."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from phi3lora import data as datasets
    from phi3lora.config import ModelSettings
    from phi3lora.modeling import choose_base_model, load_base_model, load_tokenizer, resolve_dtype

    base = choose_base_model(base).name_or_path  # "demo" -> the embedded model's folder
    dtype = resolve_dtype("auto")
    tokenizer = load_tokenizer(base)  # pads with unk, as the Cookbook does
    tokenizer.padding_side = "right"
    # the notebook loads with flash_attention_2; where flash-attn is missing (any CPU), sdpa
    attention = "flash_attention_2" if torch.cuda.is_available() and _imports("flash_attn") else "sdpa"
    model = load_base_model(ModelSettings(attn_implementation=attention, load_in_4bit="load_in_4bit=true" in settings),
                            base)
    conversations = datasets.usable_conversations(datasets.read_dataset(data))
    texts = [tokenizer.apply_chat_template(c.messages, tokenize=False) for c in conversations]
    training_config = SFTConfig(
        output_dir=str(output_dir), max_steps=steps, learning_rate=5e-6, lr_scheduler_type="cosine",
        warmup_steps=0.2, per_device_train_batch_size=BATCH_SIZE, gradient_accumulation_steps=1,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=MAX_LENGTH, packing=False, dataset_text_field="text", seed=0, logging_steps=steps,
        save_strategy="no", eval_strategy="no", report_to="none",
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, dataloader_pin_memory=torch.cuda.is_available(),
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                             target_modules="all-linear")
    return SFTTrainer(model=model, args=training_config, peft_config=peft_config, processing_class=tokenizer,
                      train_dataset=Dataset.from_dict({"text": texts}))


def _imports(module: str) -> bool:
    """Installed and importable: a flash-attn built for another torch is installed, and fails at its import."""
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - any failure to import means: not usable here
        return False


def our_trainer(base: str, data: Path, steps: int, output_dir: Path, settings: list[str]):
    from phi3lora.config import JobConfig
    from phi3lora.job_builder import override
    from phi3lora.training.trainer import prepare

    config = override(JobConfig(), [
        f"data.path={data}", f"model.base_model={base}", "num_train_epochs=1", f"logging_steps={steps}",
        f"per_device_train_batch_size={BATCH_SIZE}", f"max_length={MAX_LENGTH}", "eval_size=0",
        "save_strategy=no", "eval_strategy=no", "seed=0", *settings])
    return prepare(config, output_dir, log=lambda *_: None).trainer


def step_clock(cuda: bool):
    """A callback that notes when each optimizer step ended, the useful tokens seen by then and, on a GPU, the
    step's own peak of allocated memory (the peak is reset as each step begins)."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks, self.step_peaks, self.before_training = [], [], 0

        def _mark(self, state):
            if cuda:
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

        def on_train_begin(self, args, state, control, **kwargs):
            self._mark(state)
            if cuda:
                self.before_training = torch.cuda.memory_allocated()  # weights, adapters

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kwargs):
            self._mark(state)
            if cuda:
                self.step_peaks.append(torch.cuda.max_memory_allocated())

    return StepClock()


def measure(trainer) -> dict:
    """Train; tokens counted as the Trainer counts them, without padding. The first step is timed apart: it
    holds one-time costs (allocator and kernel warm-up, the optimizer's state) that the others do not."""
    import torch

    trainer.args.include_num_input_tokens_seen = "non_padding"
    cuda = trainer.args.device.type == "cuda"
    clock = step_clock(cuda)
    trainer.add_callback(clock)
    trainer.train()
    (begin, _), (first_end, first_tokens), (end, tokens) = clock.marks[0], clock.marks[1], clock.marks[-1]
    seconds, steady_tokens = end - first_end, tokens - first_tokens
    parameters = trainer.model.get_nb_trainable_parameters()[1]  # peft counts a 4-bit weight's true size
    result = {"steps": trainer.state.global_step, "first_step_seconds": round(first_end - begin, 2),
              "seconds": round(seconds, 2), "useful_tokens": steady_tokens,
              "tokens_per_second": round(steady_tokens / seconds, 1) if seconds else None,
              "parameters": parameters, "device": torch.cuda.get_device_name() if cuda else "cpu"}
    if cuda:
        step_tokens = [b[1] - a[1] for a, b in zip(clock.marks, clock.marks[1:])]
        at = max(range(len(clock.step_peaks)), key=clock.step_peaks.__getitem__)
        peak = clock.step_peaks[at]
        result.update(peak_memory_gb=round(peak / 2**30, 3), memory_kind="cuda max allocated",
                      memory_before_training_gb=round(clock.before_training / 2**30, 3),
                      peak_step_tokens=step_tokens[at],
                      memory_per_token_mib=round((peak - clock.before_training) / max(step_tokens[at], 1) / 2**20, 4))
    else:
        result.update(peak_memory_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, 3),
                      memory_kind="peak RSS", memory_per_token_mib=None)
    return result


def run_one(recipe: str, settings: list[str], base: str, data: Path, steps: int, keep: Path | None = None) -> dict:
    """One variant, in this process. With `keep`, the trained adapter is saved there (ours: with its config.yaml,
    as a run folder holds it), for the checks that attach it."""
    with tempfile.TemporaryDirectory() as tmp:
        output_dir = keep or Path(tmp)
        make = cookbook_trainer if recipe == "cookbook" else our_trainer
        trainer = make(base, data, steps, output_dir, settings)
        result = measure(trainer)
        if keep:
            trainer.model.config.use_cache = True
            trainer.save_model(str(keep))
        return result


def child_command(recipe: str, settings: list[str], base: str, data: Path, steps: int, result: Path,
                  keep: Path | None = None) -> list[str]:
    """The command line of one variant's own process."""
    return [sys.executable, str(Path(__file__).resolve()), "--one", recipe, "--base", base, "--data", str(data),
            "--steps", str(steps), "--result", str(result), *([f"--keep-adapter={keep}"] if keep else []),
            *[f"--set={s}" for s in settings]]


# ---------------------------------------------------------------------------------------------- the table


def subset(steps: int, folder: Path, shortest: bool = False) -> Path:
    """The first BATCH_SIZE x steps conversations of the sample (or its shortest, for a dry run's plumbing), as a
    file of the same (messages) format."""
    lines = [line for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = (sorted(lines, key=len) if shortest else lines)[: BATCH_SIZE * steps]
    path = folder / f"long_answers_first_{len(lines)}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def compare(rows: list[dict], peak_tflops: float | None = None) -> list[dict]:
    """Each row's tokens/s and memory per token as a multiple of its method's cookbook row, and MFU on a GPU."""
    for row in rows:
        reference = next((r for r in rows if r["variant"].startswith("cookbook")
                          and ("QLoRA" in r["variant"]) == ("QLoRA" in row["variant"])), None)
        if "error" in row or not row.get("tokens_per_second"):
            continue  # failed, or one step only: nothing after the warm-up step to time
        if row.get("device", "cpu") != "cpu":
            peak = peak_tflops or gpu_peaks.peak_tflops(row["device"])
            row["mfu"] = round(4 * row["parameters"] * row["tokens_per_second"] / (peak * 1e12), 4) if peak else None
        if reference is None or "error" in reference or not reference.get("tokens_per_second"):
            continue
        row["speed_vs_cookbook"] = round(row["tokens_per_second"] / reference["tokens_per_second"], 2)
        if row.get("memory_per_token_mib") and reference.get("memory_per_token_mib"):
            row["memory_per_token_vs_cookbook"] = round(row["memory_per_token_mib"] / reference["memory_per_token_mib"], 2)
    return rows


def run(steps: int = DEFAULT_STEPS, gpu: bool = False, peak_tflops: float | None = None,
        tokenizer: str | None = None) -> list[dict]:
    """Each variant in its own process (with --gpu the model is built in one more, beforehand)."""
    if gpu:
        variants = gpu_variants(bool(importlib.util.find_spec("flash_attn")), bool(importlib.util.find_spec("liger_kernel")))
    else:
        variants = CPU_VARIANTS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data, base = subset(steps, Path(tmp)), "demo"
        if gpu:
            base = str(Path(tmp) / "phi3-mini")
            build = [sys.executable, str(BENCH / "phi3_mini.py"), base, *(["--tokenizer", tokenizer] if tokenizer else [])]
            subprocess.run(build, check=True, cwd=REPO, capture_output=True)
        for name, (recipe, settings) in variants.items():
            result = Path(tmp) / "result.json"
            result.unlink(missing_ok=True)
            done = subprocess.run(child_command(recipe, settings, base, data, steps, result),
                                  capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0 or not result.is_file():
                rows.append({"variant": name, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "?"})
                continue
            rows.append({"variant": name, "settings": settings, **json.loads(result.read_text())})
    return compare(rows, peak_tflops)


def print_table(rows: list[dict]) -> None:
    print(f"{'variant':<32}{'steps':>6}{'1st s':>7}{'seconds':>9}{'tokens':>9}{'tokens/s':>10}{'x cookbook':>11}"
          f"{'peak GB':>9}{'MiB/token':>10}{'x cookbook':>11}")
    nan = float("nan")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<32} failed: {r['error']}")
            continue
        print(f"{r['variant']:<32}{r['steps']:>6}{r['first_step_seconds']:>7.1f}{r['seconds']:>9.1f}"
              f"{r['useful_tokens']:>9}{r['tokens_per_second'] or nan:>10.1f}{r.get('speed_vs_cookbook', nan):>11.2f}"
              f"{r['peak_memory_gb']:>9.2f}{r.get('memory_per_token_mib') or nan:>10.3f}"
              f"{r.get('memory_per_token_vs_cookbook', nan):>11.2f}"
              + (f"   MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""))


def main(argv=None) -> list[dict] | dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps of the unpacked variants (batch 4)")
    parser.add_argument("--gpu", action="store_true", help="Phi-3-mini size on the GPU, LoRA and QLoRA")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOPS (default: by its name)")
    parser.add_argument("--tokenizer", help="with --gpu: a tokenizer folder or hub id (default: bench/phi3_mini.py's)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--one", choices=["cookbook", "ours"], help=argparse.SUPPRESS)  # a variant's own process
    parser.add_argument("--base", default="demo", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keep-adapter", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        result = run_one(args.one, args.set, args.base, args.data, args.steps, args.keep_adapter)
        if args.result:
            args.result.write_text(json.dumps(result))
        print(json.dumps(result))
        return result
    rows = run(args.steps, args.gpu, args.peak_tflops, args.tokenizer)
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
