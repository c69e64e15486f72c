"""A conversation in the form the base model's chat template can take: system text where the template has no system role.

Phi-3 chat templates differ. Phi-3-mini-4k (July 2024 update) and Phi-3.5 render a system message as a `<|system|>`
turn; the first Phi-3-mini release and Phi-3-medium have no system role, and their templates drop system messages
without a word. For those, the system text goes at the start of the first user message (as llama.cpp does for
templates without a system role), in training, in token counts and in Compare alike, and a note says so.

Whether a template has a system role is read from what it renders for a probe conversation, not from its text.
The tokenizer comes from the caller (this package never imports transformers).
"""
from __future__ import annotations

from .dataset import Conversation

SYSTEM_ROLE_NOTE = ("note: this model's chat template has no system role: system text is put at the start of the "
                    "first user message")
SYSTEM_SEPARATOR = "\n\n"  # between the system text and the user's own words
_PROBE_SYSTEM = "phi3lora system probe 7f3a"  # text no template adds of its own accord


def has_system_role(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a system message's text (a template that raises on one, as
    some do, has none either). A tokenizer without a template is left to fail where it is used."""
    if not getattr(tokenizer, "chat_template", None):
        return True
    probe = [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}]
    try:
        return _PROBE_SYSTEM in tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # noqa: BLE001 - jinja's TemplateError or a template's own raise_exception: no system role
        return False


def system_folded(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages with a leading system message put at the start of the first user message."""
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        return messages
    system, user = messages[0], messages[1]
    return [{**user, "content": system["content"] + SYSTEM_SEPARATOR + user["content"]}, *messages[2:]]


def for_template(tokenizer, messages: list[dict[str, str]], system_role: bool | None = None) -> list[dict[str, str]]:
    """`messages` as the tokenizer's template can take them; `system_role`: has_system_role(tokenizer), when known."""
    system_role = has_system_role(tokenizer) if system_role is None else system_role
    return messages if system_role else system_folded(messages)


def conversations_for_template(tokenizer, conversations: list[Conversation]) -> list[Conversation]:
    """Every conversation as the tokenizer's template can take it (the same objects where nothing changes)."""
    if has_system_role(tokenizer):
        return conversations
    return [Conversation(c.record, system_folded(c.messages)) if c.messages[:1] and c.messages[0]["role"] == "system"
            else c for c in conversations]


def system_role_note(tokenizer, conversations: list[Conversation]) -> str | None:
    """SYSTEM_ROLE_NOTE where some conversation has a system message and the template has no system role."""
    if any(c.messages[:1] and c.messages[0]["role"] == "system" for c in conversations) and not has_system_role(tokenizer):
        return SYSTEM_ROLE_NOTE
    return None
