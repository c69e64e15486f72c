"""Limits an operator sets through the environment (a shared Space needs them); each refusal names the limit,
its value and the variable that sets it.

    PHI3LORA_MAX_UPLOAD_MB        largest upload, enforced while it streams (ui/common.py)     default 100
    PHI3LORA_MAX_RECORDS          records in a dataset file (data.py stops reading past it)    default 200000
    PHI3LORA_MAX_SEQ_LENGTH       largest training_config.max_length                           default 8192
    PHI3LORA_MAX_QUEUED_PER_USER  queued or running runs one user may have at once             default 3
    PHI3LORA_CHAT_CONCURRENCY     chats generating at once (Gradio concurrency limit)          default 4
    PHI3LORA_MAX_NEW_TOKENS       tokens in one chat answer                                    default 512
    PHI3LORA_CHAT_MEMORY_GB       memory the chat model may take (chat.py's memory guard)      default: what is free
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
}


class LimitExceeded(UserError, ValueError):
    """A request over one of the operator's limits."""


def limit(name: str) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return DEFAULTS[name]
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
