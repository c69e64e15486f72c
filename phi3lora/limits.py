"""Limits an operator sets through the environment (a shared Space needs them); each refusal names the limit,
its value and the variable that sets it.

    PHI3LORA_MAX_UPLOAD_MB        largest upload, enforced while it streams (ui/common.py)     default 100
    PHI3LORA_MAX_RECORDS          records in a dataset file (data.py stops reading past it)    default 200000
    PHI3LORA_MAX_SEQ_LENGTH       largest training_config.max_length                           default 8192
    PHI3LORA_MAX_QUEUED_PER_USER  queued or running runs one user may have at once             default 3
    PHI3LORA_CHAT_CONCURRENCY     chats generating at once (Gradio concurrency limit)          default 4
    PHI3LORA_MAX_NEW_TOKENS       tokens in one chat answer                                    default 512
    PHI3LORA_MAX_PROMPT_TOKENS    tokens of one chat conversation sent to the model            default: the model's
                                  context less the answer's max_new_tokens, at most 4096
    PHI3LORA_MAX_STEPS            largest training_config.max_steps                            default 100000
    PHI3LORA_MAX_EPOCHS           largest training_config.num_train_epochs                     default 100
    PHI3LORA_CHAT_MEMORY_GB       memory the chat model may take (chat.py's memory guard)      default: what is free
    PHI3LORA_MAX_ADAPTER_MB       what an uploaded adapter zip may unpack to (adapter_zip.py;  default 2048
                                  a known base caps it nearer, at what its adapter can weigh)
    PHI3LORA_ADAPTER_QUOTA_MB     uploaded adapters one user keeps at once                     default 4096
    PHI3LORA_ADAPTER_HOURS        hours an uploaded adapter is kept                            default 24
    PHI3LORA_CACHE_MAX_MB         Gradio's upload cache in all; the oldest files go first      default 1024
    PHI3LORA_CACHE_SECONDS        how long a file stays in Gradio's upload cache               default 3600
    PHI3LORA_DOWNLOAD_SECONDS     how long a download link (adapter zip, evaluation CSV) works default 3600
"""
from __future__ import annotations

import os

from .errors import UserError

DEFAULTS = {
    "PHI3LORA_MAX_RECORDS": 200_000,
    "PHI3LORA_MAX_SEQ_LENGTH": 8192,
    "PHI3LORA_MAX_QUEUED_PER_USER": 3,
    "PHI3LORA_CHAT_CONCURRENCY": 4,
    "PHI3LORA_MAX_NEW_TOKENS": 512,
    "PHI3LORA_MAX_ADAPTER_MB": 2048,
    "PHI3LORA_ADAPTER_QUOTA_MB": 4096,
    "PHI3LORA_ADAPTER_HOURS": 24,
    "PHI3LORA_CACHE_MAX_MB": 1024,
    "PHI3LORA_CACHE_SECONDS": 3600,
    "PHI3LORA_DOWNLOAD_SECONDS": 3600,
    "PHI3LORA_MAX_STEPS": 100_000,
    "PHI3LORA_MAX_EPOCHS": 100,
}


class LimitExceeded(UserError, ValueError):
    """A request over one of the operator's limits."""


def limit(name: str) -> int:
    if not os.environ.get(name, "").strip():
        return DEFAULTS[name]
    return _positive_int(name)


def _positive_int(name: str) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise SystemExit(f"{name} must be at least 1, got {raw!r}")
    return value


def check(name: str, value: int, what: str) -> None:
    """Refuse `value` above the limit `name`, saying which limit and its value."""
    most = limit(name)
    if value > most:
        raise LimitExceeded(f"{what} is {value}, over this server's limit of {most} ({name})")


DEFAULT_MAX_PROMPT_TOKENS = 4096  # prefill time grows with the square of it, and one model thread serves every chat
CHARACTERS_PER_TOKEN = 16  # no token of Phi-3's vocabulary is longer: a text this long is refused untokenised


def max_prompt_tokens(context: int, max_new_tokens: int) -> int:
    """$PHI3LORA_MAX_PROMPT_TOKENS, or what the model's context leaves for the prompt (at most 4096)."""
    if os.environ.get("PHI3LORA_MAX_PROMPT_TOKENS", "").strip():
        return _positive_int("PHI3LORA_MAX_PROMPT_TOKENS")
    return max(1, min(DEFAULT_MAX_PROMPT_TOKENS, context - max_new_tokens))


def check_prompt_characters(characters: int, what: str = "the conversation") -> None:
    """Refuse a text too long to hold the prompt limit's tokens, before any tokenizer or model sees it."""
    most = (_positive_int("PHI3LORA_MAX_PROMPT_TOKENS") if os.environ.get("PHI3LORA_MAX_PROMPT_TOKENS", "").strip()
            else DEFAULT_MAX_PROMPT_TOKENS)
    if characters > most * CHARACTERS_PER_TOKEN:
        raise LimitExceeded(f"{what} is {characters:,} characters, more than {most} tokens can hold: over this "
                            f"server's limit of {most} (PHI3LORA_MAX_PROMPT_TOKENS). Shorten it, or Clear the chat")
