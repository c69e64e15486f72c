"""The one source of truth for a fine-tuning job: typed settings with help text, validation and YAML.

A job is four sections. `training_config` and `peft_config` hold the hyperparameters, as in the Phi-3
Cookbook's LoRA guide; `model` says which base to load and how; `data` says what to train on.
Every field carries its help text beside it: the CLI, the YAML file and (later) the UI labels read it.

This module imports neither torch nor gradio, so anything can read a config cheaply.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError

# Phi-3 fuses q, k, v into qkv_proj and gate, up into gate_up_proj; peft has no Phi-3 defaults, so we name them.
PHI3_LINEAR_MODULES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
PHI3_EMBEDDING_MODULE = "embed_tokens"  # the Cookbook's loralib section allows LoRA on embeddings too
SECTIONS = ("model", "data", "training_config", "peft_config")
MAX_YAML_CHARS = 1_000_000  # a job file is a few kB; this bounds what one parse of a user's text may cost
SHOWN_CHARS = 60  # how much of a user's value a message quotes


def shorten(value: Any) -> str:
    """repr of a user's value, cut to what a message needs to point at it."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


class ConfigError(UserError, ValueError):
    """A setting is wrong; the message names each field and what is wrong with it."""


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases: a few hundred bytes of nested `*alias` references stand for gigabytes once
    anything walks them (a "billion laughs"). A job never needs them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(f"aliases (*name) are not accepted here ({self.peek_event().start_mark})")
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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

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


class DataSettings(_Section):
    path: str | None = Field(None, description="Dataset file: .jsonl, .json, .csv or .parquet.")
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion"] = Field(
        "auto", description="Record format; auto detects it from the columns."
    )
    drop_invalid: bool = Field(False, description="Skip records that fail validation instead of refusing the dataset.")
    eval_size: float = Field(
        0.1, ge=0, description="Held-out evaluation split: a fraction below 1, a number of conversations from 1 up, or 0 for none."
    )

    @field_validator("eval_size")
    @classmethod
    def _whole_count(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError("must be a fraction below 1 or a whole number of conversations")
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
    max_length: int = Field(2048, ge=16, le=131072, description="Tokens per conversation; longer ones are truncated.")
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
        allowed = {*PHI3_LINEAR_MODULES, PHI3_EMBEDDING_MODULE, "lm_head", "all-linear"}
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
    def method(self) -> Literal["lora", "qlora"]:
        return "qlora" if self.model.load_in_4bit else "lora"

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobConfig:
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ConfigError(_explain(error)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> JobConfig:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read config file {Path(path).name}: {getattr(error, 'strerror', None) or error}") from None
        values = load_yaml(text, f"config file {Path(path).name}") or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config file {Path(path).name} must hold a mapping with sections {', '.join(SECTIONS)}")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def with_overrides(self, assignments: list[str]) -> JobConfig:
        """Apply `key=value` strings (`training_config.learning_rate=2e-4`, or a bare field name when unique)."""
        values = self.model_dump(mode="json", exclude_unset=True)  # keeps track of what the user set
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep:
                raise ConfigError(f"--set {shorten(assignment)}: expected key=value, e.g. training_config.learning_rate=2e-4")
            section, field = _locate(key.strip())
            values.setdefault(section, {})[field] = load_yaml(raw, f"the value of {section}.{field}") if raw.strip() else None
        return JobConfig.from_dict(values)

    def explicitly_set(self) -> set[str]:
        """Dotted names of the fields a user gave, as opposed to defaults (used to apply model-specific defaults)."""
        return {f"{name}.{field}" for name in SECTIONS for field in getattr(self, name).model_fields_set}


def field_help() -> dict[str, str]:
    """`section.field` -> help text, for CLI help and UI labels."""
    return {
        f"{name}.{field}": info.description or ""
        for name in SECTIONS
        for field, info in JobConfig.model_fields[name].annotation.model_fields.items()
    }


def _locate(key: str) -> tuple[str, str]:
    if "." in key:
        section, _, field = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"unknown section {shorten(section)} in {shorten(key)}; sections are {', '.join(SECTIONS)}")
        if field not in JobConfig.model_fields[section].annotation.model_fields:
            raise ConfigError(f"unknown setting {shorten(key)}")
        return section, field
    matches = [name for name in SECTIONS if key in JobConfig.model_fields[name].annotation.model_fields]
    if not matches:
        raise ConfigError(f"unknown setting {shorten(key)}")
    if len(matches) > 1:
        raise ConfigError(f"{key!r} is ambiguous: write one of {', '.join(f'{m}.{key}' for m in matches)}")
    return matches[0], key


def _explain(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        where = ".".join(shorten(part).strip("'") for part in problem["loc"]) or "config"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown setting"
        elif "input" in problem and not isinstance(problem["input"], dict):
            message += f" (got {shorten(problem['input'])})"
        lines.append(f"{where}: {message[:300]}")  # pydantic quotes the allowed values, never the input, in msg
    return "; ".join(lines[:10]) + (f"; and {len(lines) - 10} more" if len(lines) > 10 else "")
