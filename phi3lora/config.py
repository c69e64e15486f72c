"""The one source of truth for a fine-tuning job: typed settings with help text, validation and YAML.

A job is four sections. `training_config` and `peft_config` hold the hyperparameters, as in the Phi-3
Cookbook's LoRA guide; `model` says which base to load and how; `data` says what to train on.
Every field carries its help text beside it: the CLI, the YAML file and the UI labels read it.
A job is built from its sources (config.yaml, the form, the flags, --set, the API's settings) by
`job_builder.build_job` (`load_job(path)` and `override(config, strings)` are its two most common uses).

This module imports neither torch nor gradio, so anything can read a config cheaply.
"""
from __future__ import annotations

import math
from typing import Any, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError, shorten

# Phi-3 fuses q, k, v into qkv_proj and gate, up into gate_up_proj; peft has no Phi-3 defaults, so we name them.
PHI3_LINEAR_MODULES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
PHI3_EMBEDDING_MODULE = "embed_tokens"  # the Cookbook's loralib section allows LoRA on embeddings too
SECTIONS = ("model", "data", "training_config", "peft_config")
MAX_YAML_CHARS = 1_000_000  # a job file is a few kB; this bounds what one parse of a user's text may cost
MAX_NUMBER = 2**31 - 1  # no setting needs more, and numpy, torch and C ints downstream take no more
DEFAULT_MAX_LENGTH = 2048  # training_config.max_length, and the cut wherever a dataset's token lengths are shown


def setting_name(key: Any) -> str:
    """A setting's name as a message starts with it (`training_config.r: ...`): escaped onto one line and cut."""
    return shorten(key).strip("'\"")


class ConfigError(UserError, ValueError):
    """A setting is wrong; the message names each field and what is wrong with it."""


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases or tags: a few hundred bytes of nested `*alias` references stand for gigabytes
    once anything walks them (a "billion laughs"), and a tag (`!!python/object`, `!!binary`, `!!set`) asks for a
    type no setting has. A job never needs either."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(f"aliases (*name) are not accepted here ({self.peek_event().start_mark})")
        tag = getattr(self.peek_event(), "tag", None)
        if tag is not None:
            raise yaml.YAMLError(f"tags such as {shorten(tag)} are not accepted here ({self.peek_event().start_mark})")
        return super().compose_node(parent, index)


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML (or JSON) that a user wrote, refusing aliases, huge texts and nesting Python cannot walk."""
    if len(text) > MAX_YAML_CHARS:
        raise ConfigError(f"{where} is {len(text):,} characters, over the {MAX_YAML_CHARS:,} a job may take")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        reason = str(error).strip().splitlines()
        raise ConfigError(f"{where} is not valid YAML: {' '.join(reason)[:200]}") from None
    except (ValueError, RecursionError) as error:  # int() of thousands of digits; nesting deeper than the stack
        raise ConfigError(f"{where} is not valid YAML: {str(error)[:120] or type(error).__name__}") from None


def eval_size_problem(value: Any) -> str | None:
    """What is wrong with an eval_size, or None: the one check, for data.eval_size and data.split_train_eval."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "must be a number"
    if value < 0:
        return "must not be negative"
    if value >= 1 and value != int(value):
        return "must be a fraction below 1 or a whole number of conversations"
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _not_huge(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_NUMBER:
            raise ValueError(f"must be between -{MAX_NUMBER} and {MAX_NUMBER}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _yaml_no_is_a_word(cls, values: Any) -> Any:
        """YAML reads a bare `no` as false; where a field's choices are words, give the word back."""
        if not isinstance(values, dict):
            return values
        for name, value in values.items():
            info = cls.model_fields.get(name)
            if isinstance(value, bool) and info and get_origin(info.annotation) is Literal:
                values = {**values, name: "yes" if value else "no"}
        return values


class ModelSettings(_Section):
    base_model: str | None = Field(
        None,
        description="Hub id or local folder of the base model, or 'demo' for the embedded tiny Phi-3. Empty: "
        "$PHI3LORA_BASE_MODEL if set, else microsoft/Phi-3-mini-4k-instruct on a CUDA GPU, else the demo model.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights and compute precision. auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel. flash_attention_2 needs the flash-attn package and an Ampere or newer GPU."
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: load the frozen base in 4-bit NF4 with double quantisation (bitsandbytes)."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model repository. Off: Phi-3 is built into transformers."
    )
    # --- preference training (DPO)
    adapter: str | None = Field(
        None, description="The finished SFT adapter DPO continues, also its reference: a run id or an adapter "
        "folder (--from-adapter). Its base model is the job's unless base_model is set.",
    )


class DataSettings(_Section):
    path: str | None = Field(None, description="Dataset file: .jsonl, .json, .csv or .parquet.")
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "phi3_text"] = Field(
        "auto", description="Record format; auto detects it from the columns."
    )
    columns: dict[str, str] | None = Field(
        None, description="The file's columns read as the format's: target -> column, e.g. {prompt: question, "
        "completion: answer} (--columns prompt=question,completion=answer). Empty: common names map by themselves."
    )
    drop_invalid: bool = Field(False, description="Skip records that fail validation instead of refusing the dataset.")
    eval_size: float = Field(
        0.1, description="Held-out evaluation split: a fraction below 1, a number of conversations from 1 up, or 0 for none."
    )

    @field_validator("eval_size")
    @classmethod
    def _eval_size(cls, value: float) -> float:
        problem = eval_size_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class TrainingConfig(_Section):
    num_train_epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 lets the epochs decide.")
    learning_rate: float = Field(1e-4, gt=0, lt=1, description="Peak learning rate; 1e-4 as in the Phi-3 Cookbook's LoRA notebook.")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="How the learning rate decays after warm-up."
    )
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of the steps spent warming the learning rate up from 0.")
    per_device_train_batch_size: int = Field(4, ge=1, description="Conversations per step on each GPU.")
    per_device_eval_batch_size: int = Field(4, ge=1, description="Conversations per evaluation step on each GPU.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps whose gradients add up before each optimizer update.")
    max_length: int = Field(DEFAULT_MAX_LENGTH, ge=16, le=131072, description="Tokens per conversation; longer ones are truncated.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    optim: Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw_torch_fused", description="Optimizer. adamw_torch_fused: AdamW in one fused kernel per step, the "
        "fastest on GPUs; adamw_torch: the same maths one tensor at a time; the 8-bit ones (bitsandbytes) save GPU memory."
    )
    group_by_length: bool = Field(
        True, description="Batch conversations of similar length together: less padding, faster steps."
    )
    assistant_only_loss: bool = Field(
        True, description="Learn from the assistant's turns only, not from the prompts."
    )
    packing: bool = Field(
        False, description="Pack several conversations into each row of max_length tokens, without padding; "
        "position ids restart per conversation so none attends to another. A batch then holds rows, not "
        "conversations, so an epoch has fewer steps. Fastest with flash_attention_2 on a GPU; with sdpa each row's "
        "attention is computed in full and masked, so on a CPU length-grouped batches are faster.",
    )
    use_liger_kernel: bool = Field(
        False, description="Liger's fused Triton kernels for Phi-3 (RMSNorm, RoPE, SwiGLU, cross-entropy without "
        "materialising the logits): faster and leaner on a GPU. Needs the liger-kernel package and a CUDA GPU.",
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in the backward pass: much less GPU memory, about 20% slower."
    )
    logging_steps: int = Field(10, ge=1, description="Record train loss and learning rate every this many steps.")
    eval_strategy: Literal["no", "steps", "epoch"] = Field("epoch", description="When to compute the eval loss.")
    eval_steps: int = Field(100, ge=1, description="Steps between evaluations when eval_strategy is 'steps'.")
    save_strategy: Literal["no", "steps", "epoch"] = Field("epoch", description="When to write a checkpoint (LoRA weights only).")
    save_steps: int = Field(100, ge=1, description="Steps between checkpoints when save_strategy is 'steps'.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted.")
    distributed: Literal["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "ddp", description="How several GPUs share the work (accelerate launch): DDP, FSDP, or DeepSpeed ZeRO-2/3."
    )
    seed: int = Field(42, ge=0, description="Random seed for the split, LoRA initialisation and data order.")
    # Early stopping and trackers (transformers' EarlyStoppingCallback, report_to): training/trainer.py applies them.
    early_stopping_patience: int = Field(
        0, ge=0, description="Stop once the eval loss has not improved for this many evaluations in a row, and keep "
        "the best checkpoint as the run's adapter; 0: off. Needs an eval split, and save_strategy (and save_steps) "
        "equal to eval_strategy (and eval_steps), so that every evaluation has its checkpoint.",
    )
    early_stopping_threshold: float = Field(
        0.0, ge=0, description="The least drop in eval loss that counts as an improvement for early stopping "
        "(e.g. 0.01); 0: any drop.",
    )
    report_to: Literal["none", "tensorboard", "trackio"] = Field(
        "none", description="Experiment tracker that also receives the metrics, into the run folder: tensorboard "
        "(its tensorboard/ folder) or trackio (Hugging Face's local Gradio dashboard, its trackio/ folder). "
        "Needs the package: pip install tensorboard, or trackio.",
    )

    @field_validator("early_stopping_patience")
    @classmethod
    def _stopping_has_a_checkpoint_per_evaluation(cls, patience: int, info) -> int:
        """Early stopping keeps the best evaluation's checkpoint: each evaluation needs one (the fields above are
        validated before this one, so info.data holds them)."""
        if patience == 0 or not {"eval_strategy", "save_strategy"} <= info.data.keys():
            return patience
        evaluating, saving = info.data["eval_strategy"], info.data["save_strategy"]
        if evaluating == "no":
            raise ValueError("early stopping watches the eval loss, but eval_strategy is 'no': set eval_strategy and "
                             "save_strategy to 'steps' or 'epoch', or early_stopping_patience=0")
        if saving != evaluating:
            raise ValueError(f"early stopping keeps the best evaluation's checkpoint, so save_strategy must equal "
                             f"eval_strategy ('{evaluating}'), not '{saving}'; or set early_stopping_patience=0")
        steps = info.data.get("eval_steps"), info.data.get("save_steps")
        if evaluating == "steps" and steps[0] != steps[1]:
            raise ValueError(f"early stopping keeps the best evaluation's checkpoint, so save_steps ({steps[1]}) must "
                             f"equal eval_steps ({steps[0]}); or set early_stopping_patience=0")
        return patience
    # --- preference training (DPO)
    objective: Literal["sft", "dpo"] = Field(
        "sft", description="sft: learn to write the dataset's answers; dpo: learn to prefer each pair's chosen "
        "answer to its rejected one (trl's DPOTrainer), continuing model.adapter against itself as the reference.",
    )
    dpo_beta: float = Field(
        0.1, gt=0, description="DPO's beta: how far the adapter may move from its reference; smaller lets the "
        "preferences pull harder.",
    )


class PeftConfig(_Section):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank: the inner size of the low-rank matrices.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling: the update is multiplied by lora_alpha / r.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input during training.")
    target_modules: list[str] = Field(
        list(PHI3_LINEAR_MODULES),
        min_length=1,
        description="Layers that get LoRA matrices: Phi-3's qkv_proj, o_proj, gate_up_proj, down_proj; "
        "add embed_tokens to adapt the embedding; 'all-linear' for every linear layer.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train (Phi-3 has none).")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale by lora_alpha / sqrt(r).")

    @field_validator("target_modules")
    @classmethod
    def _known_modules(cls, modules: list[str]) -> list[str]:
        if "lm_head" in modules:  # trl computes the loss from lm_head.weight directly: its LoRA would never train
            raise ValueError("'lm_head' cannot take LoRA: the loss reads its weight directly, so the adapter would "
                             "never train; remove it")
        allowed = {*PHI3_LINEAR_MODULES, PHI3_EMBEDDING_MODULE, "all-linear"}
        unknown = [m for m in modules if m not in allowed]
        if unknown:
            raise ValueError(f"unknown module {unknown[0]!r}; choose from {', '.join(sorted(allowed))}")
        if "all-linear" in modules and len(modules) > 1:
            raise ValueError("'all-linear' already covers every linear layer; list it alone")
        return modules


class JobConfig(_Section):
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    training_config: TrainingConfig = Field(default_factory=TrainingConfig)
    peft_config: PeftConfig = Field(default_factory=PeftConfig)

    @property
    def method(self) -> Literal["lora", "qlora", "dpo"]:
        if self.training_config.objective == "dpo":
            return "dpo"
        return "qlora" if self.model.load_in_4bit else "lora"

    @property
    def needs_bitsandbytes(self) -> bool:
        """4-bit weights and the 8-bit optimizers come from bitsandbytes; nothing else in a job does."""
        return self.model.load_in_4bit or "8bit" in self.training_config.optim

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobConfig:
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ConfigError(_explain(error)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def explicitly_set(self) -> set[str]:
        """Dotted names of the fields a user gave, as opposed to defaults (used to apply model-specific defaults)."""
        return {f"{name}.{field}" for name in SECTIONS for field in getattr(self, name).model_fields_set}


def section_fields(section: str) -> dict[str, Any]:
    """The fields of one section (`training_config`): name -> pydantic FieldInfo (default, annotation, help)."""
    return JobConfig.model_fields[section].annotation.model_fields


def field_help() -> dict[str, str]:
    """`section.field` -> help text, for CLI help and UI labels."""
    return {f"{name}.{field}": info.description or "" for name in SECTIONS for field, info in section_fields(name).items()}


def _explain(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        where = ".".join(setting_name(part) for part in problem["loc"]) or "config"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown setting"
        elif "input" in problem and not isinstance(problem["input"], dict):
            message += f" (got {shorten(problem['input'])})"
        lines.append(f"{where}: {message[:300]}")  # pydantic quotes the allowed values, never the input, in msg
    return "; ".join(lines[:10]) + (f"; and {len(lines) - 10} more" if len(lines) > 10 else "")
