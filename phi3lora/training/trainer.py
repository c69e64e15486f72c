"""Fine-tune Phi-3 with LoRA or QLoRA: read the job top to bottom in `train()`.

The run folder it fills:
    config.yaml                  the resolved job; `python -m phi3lora train --config config.yaml` reruns it
    metrics.jsonl                one JSON object per log event (train loss, eval loss, learning rate, ...)
    checkpoints/checkpoint-N/    LoRA weights + optimizer state, written during training
    adapter_config.json          the final adapter, in the standard PEFT layout,
    adapter_model.safetensors    holding only the LoRA weights
    summary.json                 what was trained, on what, and how it ended
    tensorboard/ or trackio/     with training_config.report_to, the tracker's logs

With training_config.early_stopping_patience, training stops once the eval loss stalls, and the adapter saved is the
best evaluation's checkpoint (transformers' load_best_model_at_end keeps that checkpoint through save_total_limit);
metrics.jsonl and summary.json say which step was kept and why training ended where it did.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors
import torch
from peft import LoraConfig
from safetensors import safe_open
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig, SFTTrainer

from .. import data
from . import preflight
from .callbacks import MetricsFile, StopWhenEvalLossStalls
from .options import tracker_dirs
from .preference import drop_reference, prepare_dpo
from .setup import PreparedJob, check_memory, early_stopping, keep_lora_in_fp32, shared_arguments
from ..config import ConfigError, JobConfig
from ..job_builder import resolve_job, write_job_file
from ..tasks import launch
from ..modeling import choose_base_model, load_base_model, load_tokenizer, stop_token_ids


@dataclass
class TrainResult:
    output_dir: str
    base_model: str
    method: str
    train_conversations: int
    eval_conversations: int
    trainable_parameters: int
    total_parameters: int
    global_step: int
    max_steps: int
    train_loss: float | None
    eval_loss: float | None  # with early stopping, the kept checkpoint's
    seconds: float
    best_step: int | None = None  # early stopping: the step whose adapter was kept
    stopped_early: bool = False
    stop_reason: str | None = None  # early stopping: which step was kept and why training ended where it did


def lora_config(config: JobConfig) -> LoraConfig:
    p = config.peft_config
    targets = "all-linear" if p.target_modules == ["all-linear"] else list(p.target_modules)
    return LoraConfig(
        r=p.r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout, target_modules=targets,
        bias=p.bias, use_rslora=p.use_rslora, task_type="CAUSAL_LM",
    )


def sft_config(config: JobConfig, output_dir: Path, has_eval: bool) -> SFTConfig:
    t = config.training_config
    return SFTConfig(
        **shared_arguments(config, output_dir, has_eval),
        use_liger_kernel=t.use_liger_kernel,
        assistant_only_loss=t.assistant_only_loss,
        # Packing is padding-free (trl's best-fit-decreasing packing, position ids restarting per conversation:
        # transformers masks attention to each conversation from them); grouping by length is for padded batches.
        packing=t.packing,
        packing_strategy="bfd",
        train_sampling_strategy="group_by_length" if t.group_by_length and not t.packing else "random",
    )


def prepare(config: JobConfig, output_dir: Path, log=print, callbacks: list[TrainerCallback] = ()) -> PreparedJob:
    """Check the data, load the base, and set up the trainer; writes config.yaml unless it already holds this
    job (a run's, written when it was queued). Nothing trains yet."""
    config, note = resolve_job(config)
    log(f"{config.method}: {note}")
    if config.training_config.use_liger_kernel:
        _check_liger_can_run()
    if config.training_config.objective == "dpo":  # preference pairs on an SFT adapter: training/preference.py
        return prepare_dpo(config, output_dir, log, callbacks)

    # 1. Data: every record checked before any model loads.
    dataset = data.read_dataset(config.data.path, config.data.format, columns=config.data.columns)
    conversations = data.usable_conversations(dataset, drop_invalid=config.data.drop_invalid)
    train_split, eval_split = data.split_train_eval(conversations, config.data.eval_size, config.training_config.seed)
    dropped = len({problem.record for problem in dataset.problems})  # not the KTO records read_dataset left out
    log(f"data: {dataset.format}, {len(train_split)} train / {len(eval_split)} eval conversations"
        + (f" ({dropped} invalid records dropped)" if dropped else ""))
    for warning in dataset.warnings:  # columns mapped by their names, KTO records left out, ignored columns
        log(f"data: warning: {warning}")

    # 2. The tokenizer and the model's config.json: every check of the job against the model before its weights load.
    base_path = choose_base_model(config.model.base_model).name_or_path
    tokenizer = load_tokenizer(base_path, config.model.trust_remote_code)
    checked = preflight.check(config, base_path, tokenizer)
    if note := data.system_role_note(tokenizer, conversations):
        log(note)
    train_split, eval_split = (data.conversations_for_template(tokenizer, split) for split in (train_split, eval_split))
    stats = data.token_stats(tokenizer, conversations, config.training_config.max_length)
    if stats.over_max_length:
        shown = ", ".join(map(str, stats.over_max_length[:10])) + (" ..." if len(stats.over_max_length) > 10 else "")
        log(f"note: {len(stats.over_max_length)} conversations exceed max_length {stats.max_length} tokens "
            f"and will be truncated (records {shown})")

    stopping = early_stopping(config, len(eval_split), len(conversations))
    check_memory(config, log)
    # The trainer's settings before the model: under DeepSpeed ZeRO-3 they make transformers load every weight
    # already sharded across the GPUs (zero.Init) rather than whole in each process.
    args = sft_config(config, output_dir, has_eval=bool(eval_split))

    # 3. The base model.
    model = load_base_model(config.model, base_path)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    output_dir.mkdir(parents=True, exist_ok=True)
    if args.process_index == 0:  # under accelerate every rank gets here: one writer per file
        write_job_file(config, output_dir)

    # 4. LoRA on top of the frozen base; trl's SFTTrainer wraps it with peft and renders the chat template (with
    #    assistant_only_loss, the training template preflight chose, which marks the assistant turns).
    with _rendering_with(tokenizer, checked.training_template), tracker_dirs(output_dir):
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=data.to_hf_dataset(train_split),
            eval_dataset=data.to_hf_dataset(eval_split) if eval_split else None,
            processing_class=tokenizer,
            peft_config=lora_config(config),
            callbacks=[MetricsFile(output_dir / "metrics.jsonl"), *stopping, *callbacks],
        )
    if args.fp16:
        keep_lora_in_fp32(trainer.model)
    return PreparedJob(config, trainer, len(train_split), len(eval_split))


def train(config: JobConfig, output_dir: str | Path, log=print, callbacks: list[TrainerCallback] = (),
          resume: bool = False) -> TrainResult:
    """Train and save the adapter. With `resume`, continue from the newest whole checkpoint (step count,
    optimizer, scheduler and data order included). A callback that stops training early still gets the adapter saved."""
    started = time.time()
    output_dir = Path(output_dir)
    log = log if launch.is_main_rank() else _silent  # several ranks: one says it, in one log
    job = prepare(config, output_dir, log, callbacks)
    trainer = job.trainer
    trainable, total = trainer.model.get_nb_trainable_parameters()
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%), LoRA only")
    checkpoint = latest_valid_checkpoint(output_dir / "checkpoints", log) if resume else None
    if resume:
        log(f"resuming from {checkpoint.name}" if checkpoint else "no whole checkpoint to resume from: starting over")
        if trainer.is_world_process_zero():
            remove_checkpoints_after(checkpoint, output_dir / "checkpoints", log)
        trainer.accelerator.wait_for_everyone()  # no rank starts while the cut-short ones are being removed

    # 5. Train, then save only the adapter (PEFT's save_pretrained writes just the LoRA weights).
    outcome = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.model.config.use_cache = True  # gradient checkpointing turned the cache off; generation wants it back
    drop_reference(trainer.model)  # DPO's frozen copy of the SFT adapter: not part of the result
    trainer.save_model(str(output_dir))  # with early stopping, the best checkpoint's adapter (the Trainer loaded it)
    kept = _kept_checkpoint(trainer)

    result = TrainResult(
        output_dir=str(output_dir), base_model=job.config.model.base_model, method=job.config.method,
        train_conversations=job.train_conversations, eval_conversations=job.eval_conversations,
        trainable_parameters=trainable, total_parameters=total, global_step=trainer.state.global_step,
        max_steps=trainer.state.max_steps, train_loss=outcome.training_loss,
        eval_loss=(kept["best_eval_loss"] if kept else _final_eval_loss(trainer)) if job.eval_conversations else None,
        seconds=round(time.time() - started, 1),
        **({key: kept[key] for key in ("best_step", "stopped_early", "stop_reason")} if kept else {}),
    )
    if kept:
        log(kept["stop_reason"])
    if trainer.is_world_process_zero():
        lineage = {"parent_adapter": job.config.model.adapter} if job.config.method == "dpo" else {}  # DPO's parent
        (output_dir / "summary.json").write_text(json.dumps(asdict(result) | lineage, indent=2), encoding="utf-8")
    return result


def _silent(*_args, **_kwargs) -> None:
    pass


@contextlib.contextmanager
def _rendering_with(tokenizer, template: str | None):
    """The tokenizer renders with `template` while SFTTrainer tokenizes the data, and with its own again after: the
    tokenizer saved with the adapter keeps the model's template."""
    if template is None:
        yield
        return
    original = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        yield
    finally:
        tokenizer.chat_template = original


def _check_liger_can_run() -> None:
    if not torch.cuda.is_available():
        raise ConfigError("training_config.use_liger_kernel: Liger's kernels run on a CUDA GPU only; set it to false here")
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("training_config.use_liger_kernel: the liger-kernel package is not installed: "
                          "pip install liger-kernel, or set it to false")


CHECKPOINT_FILES = ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json", "optimizer.pt", "scheduler.pt")


def latest_valid_checkpoint(folder: Path, log=print) -> Path | None:
    """The newest checkpoint that is whole. Trainer writes checkpoint-N in place, so a kill mid-save leaves a
    folder that looks like the newest; transformers' get_last_checkpoint would pick it. We check each file."""
    candidates = sorted(folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=checkpoint_step, reverse=True)
    for candidate in candidates:
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        log(f"skipping {candidate.name}: {problem}")
    return None


def remove_checkpoints_after(checkpoint: Path | None, folder: Path, log=print) -> None:
    """Delete the checkpoints newer than the one resumed from (all cut short, or it would have been picked): left
    in place, they count as the newest when Trainer rotates checkpoints (save_total_limit) and push whole ones out."""
    resumed = checkpoint_step(checkpoint) if checkpoint else -1
    for stale in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if checkpoint_step(stale) > resumed:
            shutil.rmtree(stale)
            log(f"removed {stale.name}: it was cut short")


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or None when it is whole."""
    for name in CHECKPOINT_FILES:
        if not (folder / name).is_file():
            return f"{name} is missing"
    try:
        with safe_open(folder / "adapter_model.safetensors", "pt") as weights:
            for key in weights.keys():
                weights.get_tensor(key)
        state = json.loads((folder / "trainer_state.json").read_text())
        for name in ("optimizer.pt", "scheduler.pt"):
            with zipfile.ZipFile(folder / name) as archive:  # torch.save writes a zip: its CRCs catch truncation
                if archive.testzip() is not None:
                    return f"{name} is corrupt"
    except (OSError, ValueError, zipfile.BadZipFile, safetensors.SafetensorError) as error:
        return f"unreadable ({type(error).__name__}: {error})"
    if state.get("global_step") != checkpoint_step(folder):
        return "trainer_state.json does not match the folder's step"
    return None


def checkpoint_step(folder: Path) -> int:
    """N of checkpoint-N; -1 for a folder not named so."""
    try:
        return int(folder.name.rsplit("-", 1)[-1])
    except ValueError:
        return -1


def _kept_checkpoint(trainer: SFTTrainer) -> dict | None:
    """With early stopping, the "best" event (which step's adapter was kept, and why training stopped), also
    appended to metrics.jsonl for the loss plots; None without early stopping or before any evaluation."""
    handler = trainer.callback_handler.callbacks
    stopper = next((c for c in handler if isinstance(c, StopWhenEvalLossStalls)), None)
    kept = stopper.kept(trainer.state) if stopper and trainer.state.best_model_checkpoint else None
    metrics = next((c for c in handler if isinstance(c, MetricsFile)), None)
    if kept and metrics:
        metrics.record(trainer.state, kept)
    return kept


def _final_eval_loss(trainer: SFTTrainer) -> float:
    """The eval loss at the last step: from the log when the trainer just evaluated, else evaluate now."""
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    if evals and evals[-1]["step"] == trainer.state.global_step:
        return evals[-1]["eval_loss"]
    return trainer.evaluate()["eval_loss"]
