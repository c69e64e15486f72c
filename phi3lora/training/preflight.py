"""Checks of a job against its base model, made before any weights load: they read config.json (through AutoConfig)
and the tokenizer only, so a setting the model cannot take is refused in a second, naming the setting, instead of
failing with a traceback after minutes of loading.

    check_model_limits(config, model_config)   training_config.max_length within the model's positions
    check_job_if_readable(config, name)        the same where config.json can be read: resolve_job's check, so
                                               `train`, `runs start`, the app's Start and its preview all make it
    training_template(tokenizer, base)         the template marking the assistant turns, for assistant-only loss
    check(config, base, tokenizer)             all of them: the trainer's, before load_base_model

(peft_config.target_modules refuses lm_head in config.py itself: that needs no model.)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from ..chat_templates import marked_template
from ..config import ConfigError, JobConfig
from ..base_model import ModelLoadError, model_file


@dataclass(frozen=True)
class Preflight:
    training_template: str | None  # the chat template to train with; None: the tokenizer's own


def check(config: JobConfig, base_path: str, tokenizer) -> Preflight:
    """Every check of `config` against its base model that needs no weights (config.json and the tokenizer)."""
    model_config = read_model_config(base_path, config.model.trust_remote_code)
    check_model_limits(config, model_config)
    template = training_template(tokenizer, base_path) if config.training_config.assistant_only_loss else None
    return Preflight(template)


# --- config.json ----------------------------------------------------------------------------------------------

def read_model_config(name_or_path: str, trust_remote_code: bool = False):
    """The model's configuration (config.json): no weights are read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        first_line = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise ModelLoadError(f"cannot read the configuration (config.json) of {name_or_path!r}: {first_line}") from None


def check_model_limits(config: JobConfig, model_config) -> None:
    """Refuse a max_length past the positions the model has learned (its rotary embedding was never trained there)."""
    positions = getattr(model_config, "max_position_embeddings", None)
    wanted = config.training_config.max_length
    if positions and wanted > positions:
        raise ConfigError(f"training_config.max_length: {wanted} tokens is more than this base model's context of "
                          f"{positions} positions (max_position_embeddings in its config.json); set it to {positions} "
                          "or less")


def check_job_if_readable(config: JobConfig, name_or_path: str) -> None:
    """check_model_limits, where the base's config.json can be read without running code from its repository (a
    base that cannot be read now fails where it loads, with its own message)."""
    model_config = _readable_config(name_or_path)
    if model_config is not None:
        check_model_limits(config, model_config)


def _readable_config(name_or_path: str):
    if Path(name_or_path).is_dir():
        return _config_or_none(name_or_path)  # a folder may change between jobs: read it each time
    return _hub_config(name_or_path)


@functools.lru_cache(maxsize=16)
def _hub_config(name: str):
    # A hub model's config.json once per process, or once found unreadable: the Train tab's preview checks the job
    # at every change, and an unreachable hub must not make it wait each time.
    return _config_or_none(name)


def _config_or_none(name_or_path: str):
    found = model_file(name_or_path, "config.json")
    positions = (found or {}).get("max_position_embeddings")
    if isinstance(positions, int):  # the number itself, read as JSON: AutoConfig would import torch (validate's start)
        return SimpleNamespace(max_position_embeddings=positions)
    if found is None and Path(name_or_path).is_dir():
        return None  # a folder without config.json (a tokenizer alone): AutoConfig could not read it either
    try:
        return read_model_config(name_or_path)
    except ModelLoadError:
        return None


# --- the chat template ----------------------------------------------------------------------------------------

def training_template(tokenizer, base_path: str) -> str | None:
    """The chat template to tokenize the training data with, for assistant-only loss: None where the tokenizer's own
    marks the assistant turns, else one that renders the same text and does (chat_templates.marked_template)."""
    template = marked_template(tokenizer)
    if template is None:
        raise ConfigError(
            f"training_config.assistant_only_loss: the chat template of {base_path} is not a Phi-3 template whose "
            "assistant turns can be marked; set training_config.assistant_only_loss=false to learn from whole "
            "conversations")
    return None if template == tokenizer.chat_template else template
