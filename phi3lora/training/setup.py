"""What supervised (SFT) and preference (DPO) training set up alike: the job's training_config as the trainer's
arguments, the prepared trainer handed back to `trainer.train`, and LoRA weights kept in fp32 under fp16.

trainer.py builds trl's SFTConfig from these arguments and preference.py its DPOConfig; each adds only what its
method alone has (packing and assistant-only loss; DPO's beta).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from ..config import ConfigError, JobConfig
from ..modeling import resolve_dtype
from ..tasks import launch
from . import memory_estimate
from .callbacks import StopWhenEvalLossStalls
from .options import TRACKIO_PROJECT


@dataclass
class PreparedJob:
    config: JobConfig  # resolved: base model and model-specific defaults filled in
    trainer: Trainer  # trl's SFTTrainer or DPOTrainer
    train_conversations: int
    eval_conversations: int


def shared_arguments(config: JobConfig, output_dir: Path, has_eval: bool) -> dict[str, Any]:
    """transformers' TrainingArguments fields from the job, the same for SFT and DPO."""
    t = config.training_config
    dtype = str(resolve_dtype(config.model.dtype)).removeprefix("torch.")
    return dict(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_length=t.max_length,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_pin_memory=torch.cuda.is_available(),
        logging_steps=t.logging_steps,
        eval_strategy=t.eval_strategy if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        bf16=dtype == "bfloat16",  # trl turns bf16 on by default; on a CPU that is ~35x slower than fp32
        fp16=dtype == "float16",
        report_to=t.report_to,  # its logs go into the run folder (options.tracker_dirs)
        project=TRACKIO_PROJECT,
        run_name=output_dir.name,
        # Early stopping keeps the best evaluation's checkpoint as the adapter; its patience survives a resume.
        load_best_model_at_end=bool(t.early_stopping_patience) and has_eval,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        restore_callback_states_from_checkpoint=bool(t.early_stopping_patience),
        dataset_num_proc=None,
        use_cpu=ranks_on_a_cpu(),  # several processes on a CPU: DDP over gloo (tasks/launch.py)
    )


def early_stopping(config: JobConfig, eval_examples: int, usable: int) -> list[StopWhenEvalLossStalls]:
    """The callback that stops once the eval loss stalls, as the job asks ([] when off); refused without an eval
    split to watch (`usable`: the dataset's usable examples, for the message)."""
    t = config.training_config
    if not t.early_stopping_patience:
        return []
    if not eval_examples:
        raise ConfigError(f"training_config.early_stopping_patience: early stopping watches the eval loss, but the "
                          f"dataset has no eval split ({usable} usable example(s), data.eval_size="
                          f"{config.data.eval_size:g}): use a larger dataset or eval_size, or early_stopping_patience=0")
    return [StopWhenEvalLossStalls(t.early_stopping_patience, t.early_stopping_threshold)]


def check_memory(config: JobConfig, log) -> None:
    """Refuse, before the weights load, a job whose memory estimate exceeds its device's free memory (with the
    setting that would fit); log the estimate otherwise. One process on its device: ranks of a launch share it."""
    if not launch.in_a_launched_rank():
        log(memory_estimate.check_fits(config))


def ranks_on_a_cpu() -> bool:
    return launch.in_a_launched_rank() and not torch.cuda.is_available()


def keep_lora_in_fp32(model) -> None:
    """Under fp16 mixed precision the trainable LoRA weights must be fp32: the gradient scaler refuses fp16
    gradients, and trl casts a quantized base's adapters to bf16, which a GPU without bf16 only emulates."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
