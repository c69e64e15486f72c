"""Limits an operator sets through the environment (a shared Space needs them), checked against requests here;
each refusal names the limit, its value and the variable that sets it. The variables, their defaults and their
parsing live in settings.py (group "limits"), and README's table of variables lists them.
"""
from __future__ import annotations

from .. import settings
from ..errors import UserError


class LimitExceeded(UserError, ValueError):
    """A request over one of the operator's limits."""


def limit(name: str) -> int:
    """The whole-number limit `name` (a PHI3LORA_* variable of settings.py), or its default."""
    return settings.get_int(name)


def check(name: str, value: int, what: str) -> None:
    """Refuse `value` above the limit `name`, saying which limit and its value."""
    most = limit(name)
    if value > most:
        raise LimitExceeded(f"{what} is {value}, over this server's limit of {most} ({name})")


DEFAULT_MAX_NEW_TOKENS = 128  # an answer's length unless asked otherwise (CLI compare and evaluate, Compare tab)
DEFAULT_MAX_PROMPT_TOKENS = 4096  # prefill time grows with the square of it, and one model thread serves every chat
CHARACTERS_PER_TOKEN = 16  # no token of Phi-3's vocabulary is longer: a text this long is refused untokenised


def max_prompt_tokens(context: int, max_new_tokens: int) -> int:
    """$PHI3LORA_MAX_PROMPT_TOKENS, or what the model's context leaves for the prompt (at most 4096)."""
    chosen = settings.get_int("PHI3LORA_MAX_PROMPT_TOKENS")
    return chosen if chosen is not None else max(1, min(DEFAULT_MAX_PROMPT_TOKENS, context - max_new_tokens))


def check_prompt_characters(characters: int, what: str = "the conversation") -> None:
    """Refuse a text too long to hold the prompt limit's tokens, before any tokenizer or model sees it."""
    most = settings.get_int("PHI3LORA_MAX_PROMPT_TOKENS") or DEFAULT_MAX_PROMPT_TOKENS
    if characters > most * CHARACTERS_PER_TOKEN:
        raise LimitExceeded(f"{what} is {characters:,} characters, more than {most} tokens can hold: over this "
                            f"server's limit of {most} (PHI3LORA_MAX_PROMPT_TOKENS). Shorten it, or Clear the chat")
