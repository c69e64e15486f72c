"""A conversation's turns as a record gave them, and the checks on them: every turn's content is real text (not
missing, empty, invisible, or a lone surrogate), and the roles go system? then user and assistant alternating,
from user to assistant. Problems are plain sentences that name the turn or field (`turn 3: gpt content is empty`).
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from .wording import describe


class Invalid(Exception):
    """A record that cannot be used; .messages says why, each naming the turn or field."""

    def __init__(self, *messages: str):
        super().__init__(*messages)
        self.messages = list(messages)


@dataclass(frozen=True)
class Turn:
    role: str  # system, user or assistant
    content: Any  # as found (with a prefix added to non-empty text): check_turns tests it
    at: str  # where the user finds it: "turn 3", "prompt turn 1", "output", "history pair 2"
    subject: str  # what a content problem names: "turn 3: gpt content", "output"
    name: str  # the role as the file spells it ("observation"), for order problems

    @classmethod
    def numbered(cls, number: int, role: str, name: str, content: Any, where: str = "turn") -> Turn:
        return cls(role, content, f"{where} {number}", f"{where} {number}: {name} content", name)

    @classmethod
    def named(cls, name: str, role: str, content: Any) -> Turn:
        return cls(role, content, name, name, role)


def check_turns(turns: list[Turn]) -> list[str]:
    """Every content problem, then the first role-order problem (later ones would only echo it)."""
    problems = [problem for turn in turns if (problem := _content_problem(turn))]
    order = _order_problem(turns)
    return problems + ([order] if order else [])


def _content_problem(turn: Turn) -> str | None:
    if turn.content is None:
        return f"{turn.subject} is missing"
    if not isinstance(turn.content, str):
        return f"{turn.subject} must be a string, found {describe(turn.content)}"
    if not turn.content.strip():
        return f"{turn.subject} is empty"
    if all(unicodedata.category(char) in _INVISIBLE for char in turn.content):
        return f"{turn.subject} is empty (it holds only invisible characters)"
    try:
        turn.content.encode("utf-8")
    except UnicodeEncodeError as error:  # a JSON "\\ud800" escape: no tokenizer or file can take it
        return (f"{turn.subject} holds a lone surrogate U+{ord(turn.content[error.start]):04X} at character "
                f"{error.start + 1}, which is not valid Unicode")
    return None


_INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}  # controls, format characters (zero-width space), separators


def _order_problem(turns: list[Turn]) -> str | None:
    """An optional system message first, then user and assistant alternating, from user to assistant."""
    if not turns:
        return "the conversation is empty"
    chat = turns[1:] if turns[0].role == "system" else turns
    if not chat:
        return "the conversation has no user or assistant turns"
    expected, previous = "user", None
    for turn in chat:
        if turn.role == "system":
            return f"{turn.at}: a system message may only come first"
        if turn.role != expected:
            if previous is None:
                return f"{turn.at}: the conversation must start with a user turn, found {_who(turn)}"
            return f"{turn.at}: {_who(turn)} follows {_who(previous)}; user and assistant turns must alternate"
        expected, previous = ("assistant" if expected == "user" else "user"), turn
    if chat[-1].role != "assistant":
        return f"{chat[-1].at}: the conversation must end with an assistant turn, found {_who(chat[-1])}"
    return None


def _who(turn: Turn) -> str:
    return turn.name if turn.name == turn.role else f"{turn.name} ({turn.role})"
