"""Training throughput and peak memory: phi3lora's training path against the Phi-3 Cookbook's LoRA recipe.

    python bench/training.py [--steps 40] [--gpu] [--out result.json]

Every variant trains one epoch over the same conversations (the first 4 x --steps of alpaca_en_demo.json:
--steps steps at batch 4, fewer for packed rows) with the same seed, each in a fresh process. The figure is
useful tokens per second: the non-padding tokens the steps processed (the Trainer's
`include_num_input_tokens_seen="non_padding"`) over the seconds they took, from the end of the first step to the
end of the last (loading, tokenising and the first step's one-time warm-up are not counted; the first step's
time is reported on its own). Peak memory: CUDA's max allocated on a GPU, the process's peak resident set on
the CPU.

cookbook  the Cookbook notebook's recipe as plain code: SFTTrainer on chat-template text, no packing, LoRA on
          `all-linear` (r 16, alpha 32, dropout 0.05), batch 4, maximum length 2048, gradient checkpointing,
          random batches padded to their longest conversation, loss on every token, AdamW (torch).
ours      phi3lora.training.trainer.prepare() at the same batch size and maximum length, every other setting as a user
          gets it: length-grouped batches, assistant-only loss, fused AdamW, gradient checkpointing off on the
          CPU (the demo model's default); plus the same with one choice changed, to measure each. On a GPU,
          ours adds flash-attention with padding-free packing and Liger's kernels, without gradient checkpointing.
On the CPU the base is the demo model in fp32 (bf16 is ~35x slower there); with --gpu it is Phi-3-mini's
architecture (`Phi3Config()`, random weights: no hub here) in bf16, LoRA and QLoRA, and MFU is reported as
4 x parameters x tokens per second over the GPU's peak bf16 FLOPS (--peak-tflops, default: an H100's 989).
"""
from __future__ import annotations

import argparse
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
sys.path.insert(0, str(REPO))

from transformers import TrainerCallback  # noqa: E402
from phi3lora.job_builder import override

DATA = REPO.parent / "shared" / "datasets" / "alpaca_en_demo.json"
BATCH_SIZE, MAX_LENGTH = 4, 2048  # the Cookbook's

# name: (recipe, --set overrides for ours). Ratios are against the first row of the same method.
CPU_VARIANTS = {
    "cookbook": ("cookbook", []),
    "ours": ("ours", []),
    "ours, random batches": ("ours", ["group_by_length=false"]),
    "ours + gradient checkpointing": ("ours", ["gradient_checkpointing=true"]),
    "ours + packing (padding-free)": ("ours", ["packing=true"]),
    "ours, unfused AdamW": ("ours", ["optim=adamw_torch"]),
}
GPU_VARIANTS = {
    "cookbook LoRA": ("cookbook", []),
    "ours LoRA": ("ours", ["attn_implementation=flash_attention_2", "packing=true", "use_liger_kernel=true",
                           "gradient_checkpointing=false"]),
    "cookbook QLoRA": ("cookbook", ["load_in_4bit=true"]),
    "ours QLoRA": ("ours", ["load_in_4bit=true", "attn_implementation=flash_attention_2", "packing=true",
                            "use_liger_kernel=true"]),
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
    attention = "flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else "sdpa"
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


def our_trainer(base: str, data: Path, steps: int, output_dir: Path, settings: list[str]):
    from phi3lora.config import JobConfig
    from phi3lora.training.trainer import prepare

    config = override(JobConfig(), [
        f"data.path={data}", f"model.base_model={base}", "num_train_epochs=1", f"logging_steps={steps}",
        f"per_device_train_batch_size={BATCH_SIZE}", f"max_length={MAX_LENGTH}", "eval_size=0",
        "save_strategy=no", "eval_strategy=no", "seed=0", *settings])
    return prepare(config, output_dir, log=lambda *_: None).trainer


class StepClock(TrainerCallback):
    """When each optimizer step ended, and how many useful tokens had been seen by then."""

    def __init__(self, synchronize):
        self.synchronize, self.marks = synchronize, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.synchronize()
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    def on_step_end(self, args, state, control, **kwargs):
        self.synchronize()
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen))


def measure(trainer) -> dict:
    """Train; tokens counted as the Trainer counts them, without padding. The first step is timed apart: it
    holds one-time costs (allocator and kernel warm-up, the optimizer's state) that the others do not."""
    import torch

    trainer.args.include_num_input_tokens_seen = "non_padding"
    cuda = trainer.args.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock(torch.cuda.synchronize if cuda else lambda: None)
    trainer.add_callback(clock)
    trainer.train()
    (begin, _), (first_end, first_tokens), (end, tokens) = clock.marks[0], clock.marks[1], clock.marks[-1]
    seconds, steady_tokens = end - first_end, tokens - first_tokens
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    parameters = trainer.model.get_nb_trainable_parameters()[1]  # peft counts a 4-bit weight's true size
    return {"steps": trainer.state.global_step, "first_step_seconds": round(first_end - begin, 2),
            "seconds": round(seconds, 2), "useful_tokens": steady_tokens,
            "tokens_per_second": round(steady_tokens / seconds, 1) if seconds else None,
            "peak_memory_gb": round(peak / 2**30, 3), "memory_kind": "cuda max allocated" if cuda else "peak RSS",
            "parameters": parameters}


def run_one(recipe: str, settings: list[str], base: str, data: Path, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        make = cookbook_trainer if recipe == "cookbook" else our_trainer
        return measure(make(base, data, steps, Path(tmp), settings))


# ---------------------------------------------------------------------------------------------- the table


def subset(steps: int, folder: Path) -> Path:
    """The first BATCH_SIZE x steps records of the dataset, as a file of the same (alpaca) format."""
    records = json.loads(DATA.read_text(encoding="utf-8"))[: BATCH_SIZE * steps]
    path = folder / f"alpaca_first_{len(records)}.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def full_size_phi3(folder: Path) -> Path:
    """Phi-3-mini's architecture with random bf16 weights and the demo tokenizer (its ids fit Phi-3's vocabulary)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from phi3lora.modeling import DEMO_MODEL_DIR, load_tokenizer

    tokenizer = load_tokenizer(str(DEMO_MODEL_DIR))
    config = Phi3Config(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    with torch.device("cuda"):
        model = Phi3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(steps: int = 40, gpu: bool = False, peak_tflops: float = 989.0) -> list[dict]:
    """Each variant in its own process; rows with the ratio of tokens/s and of peak memory to the cookbook's."""
    variants = GPU_VARIANTS if gpu else CPU_VARIANTS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(steps, Path(tmp))
        base = str(full_size_phi3(Path(tmp) / "phi3-mini")) if gpu else "demo"
        for name, (recipe, settings) in variants.items():
            command = [sys.executable, __file__, "--one", recipe, "--base", base, "--data", str(data),
                       "--steps", str(steps), *[f"--set={s}" for s in settings]]
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                rows.append({"variant": name, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "?"})
                continue
            rows.append({"variant": name, "settings": settings, **json.loads(done.stdout.strip().splitlines()[-1])})
    for row in rows:
        reference = next(r for r in rows if r["variant"].startswith("cookbook")
                         and ("QLoRA" in r["variant"]) == ("QLoRA" in row["variant"]))
        if "error" in row or "error" in reference or not row["tokens_per_second"] or not reference["tokens_per_second"]:
            continue  # failed, or one step only: nothing after the warm-up step to time
        row["speed_vs_cookbook"] = round(row["tokens_per_second"] / reference["tokens_per_second"], 2)
        row["memory_vs_cookbook"] = round(row["peak_memory_gb"] / reference["peak_memory_gb"], 2)
        if gpu:
            row["mfu"] = round(4 * row["parameters"] * row["tokens_per_second"] / (peak_tflops * 1e12), 4)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'variant':<32}{'steps':>6}{'1st s':>7}{'seconds':>9}{'tokens':>9}{'tokens/s':>10}{'x cookbook':>11}"
          f"{'peak GB':>9}{'x cookbook':>11}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<32} failed: {r['error']}")
            continue
        print(f"{r['variant']:<32}{r['steps']:>6}{r['first_step_seconds']:>7.1f}{r['seconds']:>9.1f}"
              f"{r['useful_tokens']:>9}{r['tokens_per_second'] or float('nan'):>10.1f}"
              f"{r.get('speed_vs_cookbook', float('nan')):>11.2f}"
              f"{r['peak_memory_gb']:>9.2f}{r.get('memory_vs_cookbook', float('nan')):>11.2f}"
              + (f"   MFU {100 * r['mfu']:.1f}%" if "mfu" in r else ""))


def main(argv=None) -> list[dict] | dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps of the unpacked variants (batch 4)")
    parser.add_argument("--gpu", action="store_true", help="Phi-3-mini size on the GPU, LoRA and QLoRA")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's peak dense bf16 TFLOPS")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--one", choices=["cookbook", "ours"], help=argparse.SUPPRESS)  # a variant's own process
    parser.add_argument("--base", default="demo", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        result = run_one(args.one, args.set, args.base, args.data, args.steps)
        print(json.dumps(result))
        return result
    rows = run(args.steps, args.gpu, args.peak_tflops)
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
