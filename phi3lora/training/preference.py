"""Preference training (DPO) on top of a finished SFT adapter, with trl's DPOTrainer and peft (trl's loss, none of
our own): the trainer.prepare of a job whose training_config.objective is "dpo".

The reference is the SFT adapter itself, not the bare base: DPO should move the adapted model toward the chosen
answers relative to where SFT left it. trl 1.16 has no model_adapter_name/ref_adapter_name settings any more;
instead, given a PeftModel whose "default" adapter is loaded trainable and no ref_model, DPOTrainer copies that
adapter into a frozen "ref" adapter and scores the reference with it (dpo_trainer.py, the
`is_peft_model(model) and ref_model is None` branch): one copy of the base weights, the SFT weights twice. The
"ref" copy is dropped before the adapter is saved, so the run folder holds one adapter in the standard layout.
"""
from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from .. import data
from ..config import JobConfig
from ..data.preferences import read_preferences, to_dpo_rows
from ..job_builder import write_job_file
from ..modeling import choose_base_model, load_base_model, load_tokenizer, stop_token_ids
from ..runs.lineage import find_parent
from .callbacks import MetricsFile
from .options import tracker_dirs
from .setup import PreparedJob, check_memory, early_stopping, keep_lora_in_fp32, shared_arguments

REFERENCE_ADAPTER = "ref"  # the name trl gives the frozen copy


def dpo_config(config: JobConfig, output_dir: Path, has_eval: bool) -> DPOConfig:
    return DPOConfig(**shared_arguments(config, output_dir, has_eval), beta=config.training_config.dpo_beta)


def prepare_dpo(config: JobConfig, output_dir: Path, log=print,
                callbacks: list[TrainerCallback] = ()) -> PreparedJob:
    """Check the pairs, load the base with the SFT adapter (trainable), and set up trl's DPOTrainer. `config` is
    resolved (job_builder.resolve_job: its base model is the adapter's)."""
    # 1. The pairs, every record checked before any model loads.
    preferences = read_preferences(config.data.path)
    pairs = preferences.usable(drop_invalid=config.data.drop_invalid)
    train_split, eval_split = data.split_train_eval(pairs, config.data.eval_size, config.training_config.seed)
    dropped = len({problem.record for problem in preferences.problems})
    log(f"data: preference pairs, {len(train_split)} train / {len(eval_split)} eval"
        + (f" ({dropped} invalid records dropped)" if dropped else ""))

    # 2. The tokenizer; prompts as its template takes them (system text into the first user turn where it has no
    #    system role).
    base_path = choose_base_model(config.model.base_model).name_or_path
    tokenizer = load_tokenizer(base_path, config.model.trust_remote_code)
    stopping = early_stopping(config, len(eval_split), len(pairs))
    check_memory(config, log)
    args = dpo_config(config, output_dir, bool(eval_split))

    # 3. The base, and the SFT adapter on it, trainable: DPO continues its LoRA weights.
    parent = find_parent(config.model.adapter)
    log(f"dpo: continuing {parent.describe()} (also the reference), beta "
        f"{config.training_config.dpo_beta}")
    model = load_base_model(config.model, base_path)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(model, str(parent.adapter_dir), is_trainable=True)

    output_dir.mkdir(parents=True, exist_ok=True)
    if args.process_index == 0:
        write_job_file(config, output_dir)
    with tracker_dirs(output_dir):
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=_dataset(train_split, tokenizer),
            eval_dataset=_dataset(eval_split, tokenizer) if eval_split else None,
            processing_class=tokenizer,
            callbacks=[MetricsFile(output_dir / "metrics.jsonl"), *stopping, *callbacks],
        )
    if REFERENCE_ADAPTER not in trainer.model.peft_config:  # trl fell back to the bare base: say so, never silently
        raise RuntimeError("trl did not copy the SFT adapter as the DPO reference")
    if args.fp16:
        keep_lora_in_fp32(trainer.model)
    return PreparedJob(config, trainer, len(train_split), len(eval_split))


def drop_reference(model) -> None:
    """Remove trl's frozen copy of the SFT adapter before saving: the run's adapter is the trained one alone."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)


def _dataset(pairs, tokenizer):
    """trl's conversational rows, each prompt as the tokenizer's template takes it."""
    from datasets import Dataset

    rows = to_dpo_rows(pairs)
    for row, pair in zip(rows, pairs):
        row["prompt"] = data.for_template(tokenizer, pair.prompt)
    return Dataset.from_list(rows)
