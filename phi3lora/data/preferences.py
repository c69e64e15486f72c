"""Preference pairs for DPO: a file of prompts, each with a chosen and a rejected answer, read and checked record by
record as SFT data is (`read_preferences`), in the layout trl's DPOTrainer takes (`to_dpo_rows`).

Layouts read (the first that fits each record):

  trl plain            {"prompt": "...", "chosen": "...", "rejected": "..."}
  trl conversational   {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]};
                       without "prompt", chosen and rejected are whole conversations sharing every turn but the last
  LLaMA-Factory        {"conversations": [{"from": "human", "value": ...}, ...], "system"?: "...",
                       "chosen": {"from": "gpt", "value": ...}, "rejected": {"from": "gpt", "value": ...}}

A pair is its prompt (an optional system message, then user and assistant turns alternating, ending with the
user's) and the two answers, each one string. Problems name the record and the field; a chosen answer equal to the
rejected one is refused (it teaches nothing and DPO's loss on it is flat).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import shorten
from .dataset import Problem
from .files import Unreadable, read_rows
from .turns import Turn, check_turns
from .using import usable_records
from .wording import describe

MAX_TEXT_CHARS = 1_000_000  # far past what max_length lets train; a text this long is a mistake or an attack
_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}


@dataclass(frozen=True)
class PreferencePair:
    record: int
    prompt: list[dict[str, str]]  # system? user (assistant user)*: roles system/user/assistant, string contents
    chosen: str
    rejected: str


@dataclass
class PreferenceData:
    path: Path
    records: int
    pairs: list[PreferencePair]
    problems: list[Problem] = field(default_factory=list)

    def usable(self, drop_invalid: bool = False) -> list[PreferencePair]:
        """The good pairs; refuses a file with problems unless drop_invalid, and one with no pair left."""
        return usable_records(self.path, self.pairs, self.problems, "preference pairs", drop_invalid)


def read_preferences(path: str | Path) -> PreferenceData:
    """Read and check every record of a preference file; bad content becomes a Problem, never an exception."""
    path = Path(path)
    try:
        rows, problems = read_rows(path)
    except Unreadable as error:
        return PreferenceData(path, 0, [], [Problem(None, str(error))])
    except OSError as error:
        return PreferenceData(path, 0, [], [Problem(None, f"cannot read the file: {error}")])
    records = len(rows) + len(problems)  # reading problems are records that did not parse
    pairs = []
    for number, row in rows:
        try:
            pairs.append(_pair(number, row))
        except _Refused as refused:
            problems += [Problem(number, message) for message in refused.messages]
        except RecursionError:
            problems.append(Problem(number, "a value is nested too deeply to read"))
    if not rows and not problems:
        problems.append(Problem(None, "the file holds no records"))
    return PreferenceData(path, records, pairs, sorted(problems, key=lambda p: (p.record is not None, p.record or 0)))


def to_dpo_rows(pairs: list[PreferencePair]) -> list[dict[str, Any]]:
    """trl's conversational preference rows: the prompt's messages, and each answer as one assistant message."""
    return [{"prompt": pair.prompt, "chosen": [{"role": "assistant", "content": pair.chosen}],
             "rejected": [{"role": "assistant", "content": pair.rejected}]} for pair in pairs]


class _Refused(Exception):
    def __init__(self, *messages: str):
        super().__init__(*messages)
        self.messages = list(messages)


def _pair(number: int, row: Any) -> PreferencePair:
    if not isinstance(row, dict):
        raise _Refused(f"expected an object with prompt, chosen and rejected, found {describe(row)}")
    missing = [name for name in ("chosen", "rejected") if row.get(name) is None]
    if missing:
        raise _Refused(f"{' and '.join(repr(m) for m in missing)} {'is' if len(missing) == 1 else 'are'} missing: "
                       "a preference record needs a chosen and a rejected answer")
    if "conversations" in row:
        prompt = _turns(row["conversations"], "conversations", "from", "value")
        if row.get("system") is not None:
            prompt = [Turn.named("system", "system", row["system"]), *prompt]
        chosen, rejected = (_answer(row[name], name) for name in ("chosen", "rejected"))
    elif isinstance(row["chosen"], list) or isinstance(row.get("prompt"), list):
        prompt, chosen, rejected = _conversational(row)
    elif row.get("prompt") is None:
        raise _Refused("'prompt' is missing: plain chosen and rejected texts need the prompt they answer")
    else:
        prompt = [Turn.named("prompt", "user", row["prompt"])]
        chosen, rejected = Turn.named("chosen", "assistant", row["chosen"]), Turn.named("rejected", "assistant",
                                                                                         row["rejected"])
    problems = check_turns([*prompt, chosen]) + [p for p in check_turns([*prompt, rejected]) if p.startswith("rejected ")]
    problems += [f"{turn.subject} is {len(turn.content):,} characters, over the {MAX_TEXT_CHARS:,} a text may hold"
                 for turn in (*prompt, chosen, rejected) if isinstance(turn.content, str)
                 and len(turn.content) > MAX_TEXT_CHARS]
    if not problems and chosen.content.strip() == rejected.content.strip():
        problems.append("chosen and rejected are the same answer: a pair must prefer one answer to another")
    if problems:
        raise _Refused(*dict.fromkeys(problems))
    return PreferencePair(number, [{"role": t.role, "content": t.content} for t in prompt], chosen.content,
                          rejected.content)


def _conversational(row: dict) -> tuple[list[Turn], Turn, Turn]:
    """trl's conversational layout, with an explicit prompt or one implicit in the shared turns."""
    chosen_turns = _turns(row["chosen"], "chosen", "role", "content")
    rejected_turns = _turns(row["rejected"], "rejected", "role", "content")
    if row.get("prompt") is not None:
        prompt = _turns(row["prompt"], "prompt", "role", "content")
    else:  # implicit prompt: every turn but the last is shared
        prompt = chosen_turns[:-1]
        if [(t.role, t.content) for t in prompt] != [(t.role, t.content) for t in rejected_turns[:-1]]:
            raise _Refused("chosen and rejected must share every turn but the last (the implicit prompt), or give "
                           "a 'prompt'")
        chosen_turns, rejected_turns = chosen_turns[-1:], rejected_turns[-1:]
    for name, turns in (("chosen", chosen_turns), ("rejected", rejected_turns)):
        if len(turns) != 1:
            raise _Refused(f"{name} must hold one assistant message, found {len(turns)}")
    return prompt, _renamed(chosen_turns[0], "chosen"), _renamed(rejected_turns[0], "rejected")


def _turns(value: Any, name: str, role_key: str, content_key: str) -> list[Turn]:
    if not isinstance(value, list) or not value:
        raise _Refused(f"{name} must be a non-empty list of messages, found {describe(value)}")
    turns = []
    for number, message in enumerate(value, 1):
        if not isinstance(message, dict):
            raise _Refused(f"{name} message {number} must be an object, found {describe(message)}")
        role = message.get(role_key, message.get("role"))
        if not isinstance(role, str) or role not in _ROLES:
            shown = shorten(role) if isinstance(role, str) else describe(role)
            raise _Refused(f"{name} message {number}: unknown role {shown}; use "
                           f"{', '.join(sorted(_ROLES))}")
        content = message.get(content_key, message.get("content"))
        turns.append(Turn.numbered(number, _ROLES[role], role, content, f"{name} message"))
    return turns


def _answer(value: Any, name: str) -> Turn:
    """LLaMA-Factory's answer: one {"from": "gpt", "value": ...} message (or its text)."""
    if isinstance(value, str):
        return Turn.named(name, "assistant", value)
    turns = _turns([value] if isinstance(value, dict) else value, name, "from", "value")
    if len(turns) != 1 or turns[0].role != "assistant":
        raise _Refused(f"{name} must be one assistant message (from gpt)")
    return _renamed(turns[0], name)


def _renamed(turn: Turn, name: str) -> Turn:
    """The answer named as the record's field, so its problems read `chosen is empty`."""
    if turn.role != "assistant":
        raise _Refused(f"{name}: the answer must be an assistant message, found {turn.name}")
    return Turn.named(name, "assistant", turn.content)
