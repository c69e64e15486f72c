"""Chat-instruction datasets: read a file, detect its format, normalise it to Phi-3 chat messages, check it
record by record, render it with the chat template, count tokens, and split train/eval.

Every format becomes a list of {"role": "system" | "user" | "assistant", "content": str} messages:

  messages           {"messages": [{"role", "content"}], "tools"?}
                     system/user/assistant as they are; tool -> user "Function result:\\n..."; an assistant's
                     tool_calls -> "Function call:\\n" + [{"name", "arguments"}] JSON after its text
  sharegpt           {"conversations": [{"from", "value"}], "tools"?, "system"?}      (see _SHAREGPT_ROLES)
                     human -> user, gpt -> assistant, system -> system,
                     function_call -> assistant "Function call:\\n...", observation -> user "Function result:\\n..."
  alpaca             {"instruction", "input"?, "output", "system"?, "history"?}
                     history pairs first, then user = instruction + "\\n\\n" + input, assistant = output
  prompt_completion  {"prompt", "completion"}: two strings (one user turn, one assistant turn) or two lists of messages

A `tools` value (JSON text or a list) opens the system message: "You can call these functions:\\n" + its JSON.

Detection: the format whose required columns most records have (a tie goes to the earlier one in FORMATS);
records of another shape each get a problem naming the missing columns. Other columns are ignored (a warning).

Record numbers: the line number in a .jsonl file; the 1-based position elsewhere (array item, CSV data row,
Parquet row). Bad content never raises: it becomes a Problem with the record number and a plain reason.
A file of more records than PHI3LORA_MAX_RECORDS (limits.py) is refused whole, as soon as reading passes the limit.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import random
import re
import statistics
import sys
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import limits
from .errors import UserError

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")

FUNCTION_CALL = "Function call:\n"
FUNCTION_RESULT = "Function result:\n"
TOOLS_HEADER = "You can call these functions:\n"

# Columns of each format: the required ones identify it; anything else beside them is ignored with a warning.
_REQUIRED = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}
_OPTIONAL = {
    "messages": ("tools",),
    "sharegpt": ("tools", "system"),
    "alpaca": ("input", "system", "history"),
    "prompt_completion": (),
}

# OpenAI-style role -> Phi-3 role.
_MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "user"}

# ShareGPT "from" -> (Phi-3 role, prefix of the content).
_SHAREGPT_ROLES = {
    "human": ("user", ""),
    "user": ("user", ""),
    "gpt": ("assistant", ""),
    "assistant": ("assistant", ""),
    "system": ("system", ""),
    "function_call": ("assistant", FUNCTION_CALL),
    "observation": ("user", FUNCTION_RESULT),
}

_MAX_LISTED_PROBLEMS = 20
_MAX_SHOWN_CHARS = 60  # a value a message quotes from the file is cut to this: never echo megabytes back

# What a binary file that arrives under a text name starts with -> (what it is, what to do).
_SIGNATURES = {
    b"PK\x03\x04": ("a ZIP archive", "unpack it and upload the dataset file inside"),
    b"\x1f\x8b": ("gzip-compressed", "decompress it and upload the dataset file"),
    b"\xfd7zXZ\x00": ("xz-compressed", "decompress it and upload the dataset file"),
    b"PAR1": ("a Parquet file", "name it .parquet"),
    b"\x89PNG": ("a PNG image", "upload the dataset file"),
    b"\xff\xd8\xff": ("a JPEG image", "upload the dataset file"),
}


# ---------------------------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Problem:
    record: int | None  # 1-based record number (the line number in a .jsonl file); None for the whole file
    message: str

    def __str__(self) -> str:
        return self.message if self.record is None else f"record {self.record}: {self.message}"


class DatasetError(UserError, ValueError):
    """The project's own validation error: the message is one or more plain sentences; .problems holds the list."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems: list[Problem] = list(problems or [])


@dataclass
class Conversation:
    record: int
    messages: list[dict[str, str]]  # roles system/user/assistant only, content always a string


@dataclass
class LoadedDataset:
    path: Path
    format: str | None  # None when undetectable
    records: int  # records found in the file, good and bad
    conversations: list[Conversation]  # the good ones
    problems: list[Problem]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.conversations)


@dataclass
class TokenStats:
    count: int
    min: int
    max: int
    mean: float
    median: float
    p95: int
    max_length: int
    over_max_length: list[int]  # record numbers of the conversations longer than max_length


# ---------------------------------------------------------------------------------------------- reading


def read_dataset(path: str | Path, format: str = "auto") -> LoadedDataset:
    """Load, detect, normalise and check a dataset file. Raises DatasetError only for a bad `format` argument."""
    format = format or "auto"
    if format not in ("auto", *FORMATS):
        raise DatasetError(f"unknown dataset format {format!r}: choose auto, {', '.join(FORMATS)}")
    path = Path(path)
    try:
        rows, problems = _read_rows(path)
    except _Unreadable as error:
        return LoadedDataset(path, None, 0, [], [Problem(None, str(error))])
    except OSError as error:  # no permission, a read error
        return LoadedDataset(path, None, 0, [], [Problem(None, f"cannot read the file: {error}")])
    records = len(rows) + len(problems)  # reading problems are records that did not parse
    objects = [(number, row) for number, row in rows if isinstance(row, dict)]
    problems += [
        Problem(number, f"expected an object with named fields, found {_describe(row)}")
        for number, row in rows
        if not isinstance(row, dict)
    ]

    detected = _detect([row for _, row in objects]) if format == "auto" else format
    conversations: list[Conversation] = []
    if detected is None:
        if objects:
            problems.append(Problem(None, _no_format_message(objects)))
        elif not records:
            problems.append(Problem(None, "the file holds no records"))
    else:
        for number, row in objects:
            try:
                conversations.append(Conversation(number, _normalise(row, detected)))
            except _Invalid as invalid:
                problems += [Problem(number, message) for message in invalid.messages]
            except RecursionError:  # JSON text in a cell, or tools, nested deeper than Python goes
                problems.append(Problem(number, "a value is nested too deeply to read"))

    problems.sort(key=lambda p: (p.record is not None, p.record or 0))  # stable: a record's problems stay in order
    warnings = _ignored_columns_warning(objects, detected) if detected else []
    return LoadedDataset(path, detected, records, conversations, problems, warnings)


class _Unreadable(Exception):
    """The whole file cannot be read; the message says why."""


def _read_rows(path: Path) -> tuple[list[tuple[int, Any]], list[Problem]]:
    """(record number, parsed value) for each record, plus problems for records that did not parse."""
    if not path.exists():
        raise _Unreadable(f"file not found: {path}")
    if not path.is_file():
        raise _Unreadable(f"not a file: {path}")
    extension = path.suffix.lower()
    if extension not in SUPPORTED_EXTENSIONS:
        raise _Unreadable(
            f"unsupported file type {extension or '(no extension)'!r}: use {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if path.is_symlink() and Path(os.path.realpath(path)).suffix.lower() != extension:
        # say nothing of the target: a link named data.csv must not read out /etc/passwd
        raise _Unreadable(f"{path.name} is a link to a file that is not a {extension} dataset: use the file itself")
    if path.stat().st_size == 0:
        raise _Unreadable("the file is empty")
    if extension == ".parquet":
        return _read_parquet(path), []
    text = _read_text(path)
    if extension == ".jsonl":
        return _parse_jsonl(text)
    if extension == ".json":
        return _parse_json(text), []
    return _parse_csv(text)


def _read_text(path: Path) -> str:
    """UTF-8 text, with or without a byte order mark; anything else is refused with the reason."""
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _looks_like_utf16(raw[:4096]):
        raise _Unreadable("the file is UTF-16 text: save it as UTF-8 and upload it again")
    for signature, (what, advice) in _SIGNATURES.items():
        if raw.startswith(signature):
            raise _Unreadable(f"the file is {what}, not JSON Lines, JSON or CSV text: {advice}")
    nul = raw.find(b"\0")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise _Unreadable(f"the file does not look like a text file (it contains NUL bytes, the first at byte offset "
                          f"{nul}, line {line}): expected JSON Lines, JSON or CSV text")
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = bom + error.start
        line = raw.count(b"\n", 0, offset) + 1
        raise _Unreadable(
            f"the file is not UTF-8 text: byte 0x{raw[offset]:02x} at byte offset {offset} (line {line}) "
            "is not UTF-8; save the file as UTF-8 and upload it again"
        ) from None
    if not text.strip():
        raise _Unreadable("the file is empty")
    return text


def _looks_like_utf16(head: bytes) -> bool:
    """UTF-16 without a byte order mark: ASCII text then has a NUL in every other byte, and only there."""
    if len(head) < 4:
        return False
    even, odd = head[0::2], head[1::2]
    return any(a.count(0) > 0.6 * len(a) and b.count(0) < 0.1 * len(b) for a, b in ((even, odd), (odd, even)))


class _NotJSON(Exception):
    """JSON text that cannot be read: .reason in plain words, .line and .column where the parser knows them."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None):
        super().__init__(reason)
        self.reason, self.line, self.column = reason, line, column

    def reason_at_column(self) -> str:
        return f"{self.reason} (column {self.column})" if self.column else self.reason


def _loads(text: str) -> Any:
    """json.loads, with each way it fails (syntax, a number too long to convert, nesting) as a _NotJSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _NotJSON(error.msg, error.lineno, error.colno) from None
    except ValueError:  # an integer over sys.get_int_max_str_digits(): json gives no position for it
        raise _NotJSON(f"a number has more than {sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        raise _NotJSON("it is nested too deeply to read") from None


def _over_the_record_limit(count: int | None = None) -> _Unreadable:
    """Stop reading a file past PHI3LORA_MAX_RECORDS: loading millions of records would take minutes and gigabytes."""
    most = limits.limit("PHI3LORA_MAX_RECORDS")
    held = f"the dataset's record count is {count}" if count else f"the file holds more than {most} records"
    return _Unreadable(f"{held}, over this server's limit of {most} (PHI3LORA_MAX_RECORDS)")


def _parse_jsonl(text: str) -> tuple[list[tuple[int, Any]], list[Problem]]:
    rows, problems, most = [], [], limits.limit("PHI3LORA_MAX_RECORDS")
    for number, line in _nonblank_lines(text):
        if len(rows) + len(problems) == most:
            raise _over_the_record_limit()
        try:
            rows.append((number, _loads(line)))
        except _NotJSON as error:
            problems.append(Problem(number, f"line {number} is not valid JSON: {error.reason_at_column()}"))
    return rows, problems


def _nonblank_lines(text: str):
    """(line number, line) for each line holding more than whitespace, found by a regular expression, so that
    millions of blank lines cost no Python loop. Lines end at "\n" only: str.splitlines would also break at
    U+2028 and friends, which JSON strings may hold raw."""
    number, line_start = 1, 0
    for found in _NONBLANK.finditer(text):
        start = text.rfind("\n", 0, found.start()) + 1  # keep the line's indentation: error columns count it
        number += text.count("\n", line_start, start)
        line_start = start
        yield number, text[start:found.end()]


_NONBLANK = re.compile(r"\S[^\n]*")


def _parse_json(text: str) -> list[tuple[int, Any]]:
    """A JSON array of records, an object holding exactly one list of records, or a single record."""
    try:
        data = _loads(text)
    except _NotJSON as error:
        if error.line is None:
            raise _Unreadable(f"cannot read the JSON: {error.reason}") from None
        hint = "; if it holds one JSON object per line, name it .jsonl" if error.reason == "Extra data" else ""
        reason = error.reason.removesuffix(" at")  # "Unterminated string starting at" + " at line 3"
        raise _Unreadable(f"not valid JSON: {reason} at line {error.line}, column {error.column}{hint}") from None
    if isinstance(data, dict):
        if _formats_matched(data):
            data = [data]
        else:
            lists = [key for key, value in data.items() if isinstance(value, list)]
            if len(lists) != 1:
                raise _Unreadable("expected a JSON array of records, or an object holding one list of records; "
                                  f"found an object with keys {_shown_names(list(data))}")
            data = data[lists[0]]
    if not isinstance(data, list):
        raise _Unreadable(f"expected a JSON array of records, found {_describe(data)}")
    if len(data) > limits.limit("PHI3LORA_MAX_RECORDS"):
        raise _over_the_record_limit(len(data))
    return list(enumerate(data, 1))


def _parse_csv(text: str) -> tuple[list[tuple[int, Any]], list[Problem]]:
    """A header row, then one record per data row (blank rows skipped). Cells are strings; list-valued fields
    (messages, conversations, history, tools) hold JSON text, which the normalisers parse."""
    csv.field_size_limit(2**31 - 1)  # whole conversations in one cell exceed the 128 KiB default
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        duplicates = [name for name, n in Counter(header).items() if n > 1]
        if duplicates:
            raise _Unreadable(f"the CSV header repeats the column {_shown(duplicates[0])}")
        rows, problems, number, most = [], [], 0, limits.limit("PHI3LORA_MAX_RECORDS")
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if number == most:
                raise _over_the_record_limit()
            number += 1
            if len(cells) == len(header):
                rows.append((number, dict(zip(header, cells))))
            else:
                problems.append(Problem(number, f"the row has {len(cells)} cell(s) but the header has "
                                                f"{len(header)} columns (CSV line {reader.line_num})"))
    except csv.Error as error:
        raise _Unreadable(f"not valid CSV near line {reader.line_num}: {error}") from None
    return rows, problems


def _read_parquet(path: Path) -> list[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows > limits.limit("PHI3LORA_MAX_RECORDS"):
            raise _over_the_record_limit(rows)
        return list(enumerate(pq.read_table(path).to_pylist(), 1))
    except (pa.ArrowException, OSError) as error:
        raise _Unreadable(f"not a readable Parquet file: {error}") from None


# ---------------------------------------------------------------------------------------------- detection


def _formats_matched(record: dict) -> list[str]:
    # null counts as absent: a Parquet table has every column in every row
    return [fmt for fmt in FORMATS if all(record.get(key) is not None for key in _REQUIRED[fmt])]


def _detect(records: list[dict]) -> str | None:
    """The format that most records match; a tie goes to the one listed first in FORMATS."""
    counts = Counter(fmt for record in records for fmt in _formats_matched(record))
    if not counts:
        return None
    return max(FORMATS, key=lambda fmt: counts[fmt])  # max keeps the first of equals


def _no_format_message(objects: list[tuple[int, dict]]) -> str:
    found = _shown_names(list(dict.fromkeys(key for _, row in objects for key in row)))
    needs = ["+".join(map(repr, keys)) for keys in _REQUIRED.values()]
    return f"no known format: found columns {found}; expected {', '.join(needs[:-1])}, or {needs[-1]}"


def _ignored_columns_warning(objects: list[tuple[int, dict]], fmt: str) -> list[str]:
    known = {*_REQUIRED[fmt], *_OPTIONAL[fmt]}
    ignored = list(dict.fromkeys(key for _, row in objects for key in row if key not in known))
    if not ignored:
        return []
    return [f"ignored columns (not part of the {fmt} format): {_shown_names(ignored)}"]


# ---------------------------------------------------------------------------------------------- normalising


class _Invalid(Exception):
    """A record that cannot be used; .messages says why, each naming the turn or field."""

    def __init__(self, *messages: str):
        super().__init__(*messages)
        self.messages = list(messages)


@dataclass(frozen=True)
class _Turn:
    role: str  # system, user or assistant
    content: Any  # as found (with a prefix added to non-empty text): _check_turns tests it
    at: str  # where the user finds it: "turn 3", "prompt turn 1", "output", "history pair 2"
    subject: str  # what a content problem names: "turn 3: gpt content", "output"
    name: str  # the role as the file spells it ("observation"), for order problems

    @classmethod
    def numbered(cls, number: int, role: str, name: str, content: Any, where: str = "turn") -> _Turn:
        return cls(role, content, f"{where} {number}", f"{where} {number}: {name} content", name)

    @classmethod
    def named(cls, name: str, role: str, content: Any) -> _Turn:
        return cls(role, content, name, name, role)


def _normalise(record: dict, fmt: str) -> list[dict[str, str]]:
    missing = [key for key in _REQUIRED[fmt] if record.get(key) is None]
    if missing:
        raise _Invalid(f"missing {_quoted(missing)} (the {fmt} format needs {_quoted(_REQUIRED[fmt])})")
    turns = _NORMALISERS[fmt](record)
    problems = _check_turns(turns)
    if problems:
        raise _Invalid(*problems)
    return [{"role": turn.role, "content": turn.content} for turn in turns]


def _normalise_messages(record: dict) -> list[_Turn]:
    messages = _list_field(record, "messages", "a list of {role, content} objects")
    return _add_tools(_message_turns(messages, "turn"), record.get("tools"))


def _message_turns(messages: list, where: str) -> list[_Turn]:
    """OpenAI-style messages; `where` names them in problems ("turn", "prompt turn")."""
    turns = []
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise _Invalid(f"{where} {number} must be an object with 'role' and 'content', found {_describe(message)}")
        role = _role(message, "role", _MESSAGE_ROLES, f"{where} {number}")
        content = message.get("content")
        if role == "tool":
            content = _prefixed(FUNCTION_RESULT, content)
        elif role == "assistant" and message.get("tool_calls"):
            content = _with_tool_calls(content, message["tool_calls"])
        turns.append(_Turn.numbered(number, _MESSAGE_ROLES[role], role, content, where))
    _check_tool_results(messages, where)
    return turns


def _check_tool_results(messages: list[dict], where: str) -> None:
    """An assistant's tool_calls are answered by a tool message before the conversation goes on; a call may end
    it (OpenAI's fine-tuning format teaches calling that way)."""
    for number, (message, after) in enumerate(zip(messages, messages[1:]), 1):
        if message.get("role") == "assistant" and message.get("tool_calls") and after.get("role") != "tool":
            raise _Invalid(f"{where} {number}: the assistant's tool_calls must be followed by a tool result, "
                           f"found {_shown(after.get('role'))}")


def _with_tool_calls(content: Any, tool_calls: Any) -> Any:
    """The assistant's text (if any), then its calls in the {"name", "arguments"} JSON of ShareGPT function_call."""
    calls = [_simple_call(call) for call in (tool_calls if isinstance(tool_calls, list) else [tool_calls])]
    call_text = FUNCTION_CALL + _dumps(calls[0] if len(calls) == 1 else calls, "tool_calls")
    if content is None or (isinstance(content, str) and not content.strip()):
        return call_text
    return f"{content}\n\n{call_text}" if isinstance(content, str) else content  # a wrong type is reported later


def _simple_call(call: Any) -> Any:
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or "name" not in function:
        return call  # not OpenAI-shaped: keep it as it is
    arguments = function.get("arguments")
    if isinstance(arguments, str):  # OpenAI sends the arguments as JSON text
        try:
            arguments = _loads(arguments)
        except _NotJSON:
            pass
    return {"name": function["name"], "arguments": arguments}


def _normalise_sharegpt(record: dict) -> list[_Turn]:
    conversation = _list_field(record, "conversations", "a list of {from, value} objects")
    turns = []
    for number, turn in enumerate(conversation, 1):
        if not isinstance(turn, dict):
            raise _Invalid(f"turn {number} must be an object with 'from' and 'value', found {_describe(turn)}")
        name = _role(turn, "from", _SHAREGPT_ROLES, f"turn {number}")
        role, prefix = _SHAREGPT_ROLES[name]
        turns.append(_Turn.numbered(number, role, name, _prefixed(prefix, turn.get("value"))))
    _check_function_calls(turns)
    return _add_tools(_system_turns(record.get("system")) + turns, record.get("tools"))


def _check_function_calls(turns: list[_Turn]) -> None:
    following = [turn.name for turn in turns[1:]] + ["nothing"]
    for turn, after in zip(turns, following):
        if turn.name == "function_call" and after != "observation":
            raise _Invalid(f"{turn.at}: a function_call must be followed by an observation, found {after}")


def _normalise_alpaca(record: dict) -> list[_Turn]:
    turns = _system_turns(record.get("system"))
    for number, pair in enumerate(_list_field(record, "history", "a list of [user, assistant] pairs", []), 1):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise _Invalid(f"history pair {number} must be a [user, assistant] pair, found {_describe(pair)}")
        at = f"history pair {number}"
        turns += [_Turn("user", pair[0], at, f"{at}: user message", "user"),
                  _Turn("assistant", pair[1], at, f"{at}: assistant message", "assistant")]
    turns.append(_Turn.named("instruction", "user", _alpaca_prompt(record)))
    turns.append(_Turn.named("output", "assistant", record["output"]))
    return turns


def _alpaca_prompt(record: dict) -> str:
    """The instruction, then the input after a blank line; either may be empty, not both."""
    parts = {"instruction": record["instruction"], "input": record.get("input")}
    if parts["input"] is None:
        parts["input"] = ""
    for key, value in parts.items():
        if not isinstance(value, str):
            raise _Invalid(f"{key} must be a string, found {_describe(value)}")
    return "\n\n".join(part for part in parts.values() if part.strip())


def _normalise_prompt_completion(record: dict) -> list[_Turn]:
    prompt, completion = record["prompt"], record["completion"]
    as_lists = _json_list(prompt), _json_list(completion)
    if all(_looks_like_messages(value) for value in as_lists):  # conversational pairs saved as JSON text (CSV)
        prompt, completion = as_lists
    if isinstance(prompt, str) and isinstance(completion, str):
        return [_Turn.named("prompt", "user", prompt), _Turn.named("completion", "assistant", completion)]
    if isinstance(prompt, list) and isinstance(completion, list):
        return _message_turns(prompt, "prompt turn") + _message_turns(completion, "completion turn")
    raise _Invalid("prompt and completion must both be strings or both be lists of messages, "
                   f"found {_describe(prompt)} and {_describe(completion)}")


_NORMALISERS = {
    "messages": _normalise_messages,
    "sharegpt": _normalise_sharegpt,
    "alpaca": _normalise_alpaca,
    "prompt_completion": _normalise_prompt_completion,
}


# ---------------------------------------------------------------------------------------------- normaliser helpers


def _role(turn: dict, key: str, allowed: dict, at: str) -> str:
    name = turn.get(key)
    if name is None:
        raise _Invalid(f"{at}: missing {key!r}")
    if not isinstance(name, str) or name not in allowed:
        raise _Invalid(f"{at}: unknown role {_shown(name)}; use {_quoted(allowed, 'or')}")
    return name


def _prefixed(prefix: str, content: Any) -> Any:
    """prefix + content for real text; anything else unchanged, so the content check reports it."""
    return prefix + content if isinstance(content, str) and content.strip() else content


def _system_turns(system: Any) -> list[_Turn]:
    """A system column as the first turn; an empty one means none."""
    if system is None or (isinstance(system, str) and not system.strip()):
        return []
    return [_Turn.named("system", "system", system)]


def _add_tools(turns: list[_Turn], tools: Any) -> list[_Turn]:
    """Tools open the system message: Phi-3's chat template has no place of its own for them."""
    text = _tools_text(tools)
    if text is None:
        return turns
    first = turns[0] if turns else None
    if first and first.role == "system" and isinstance(first.content, str) and first.content.strip():
        return [replace(first, content=f"{text}\n\n{first.content}"), *turns[1:]]
    return [_Turn.named("tools", "system", text), *turns]


def _tools_text(tools: Any) -> str | None:
    if isinstance(tools, str):
        if not tools.strip():
            return None
        try:
            tools = _loads(tools)
        except _NotJSON as error:
            raise _Invalid(f"tools is not valid JSON: {error.reason_at_column()}") from None
    if tools is None or tools == [] or tools == {}:
        return None
    if not isinstance(tools, (list, dict)):
        raise _Invalid(f"tools must be a list of function descriptions, found {_describe(tools)}")
    return TOOLS_HEADER + _dumps(tools, "tools")


def _dumps(value: Any, what: str) -> str:
    """JSON text of a value from the file; Parquet can hold what JSON cannot (binary, timestamps)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise _Invalid(f"{what} cannot be written as JSON text ({error})") from None


def _list_field(record: dict, key: str, expected: str, default: list | None = None) -> list:
    """record[key] as a list; JSON text holding a list counts (CSV cells, JSON-encoded columns)."""
    value = _json_list(record.get(key))
    if isinstance(value, list):
        return value
    if default is not None and value in (None, ""):  # absent, or an empty CSV cell
        return default
    found = "text that is not a JSON list" if isinstance(value, str) and value else _describe(value)
    raise _Invalid(f"{key} must be {expected}, found {found}")


def _json_list(value: Any) -> Any:
    """The list a string holds as JSON text; any other value unchanged."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = _loads(value)
        except _NotJSON:
            return value
        return parsed if isinstance(parsed, list) else value
    return value


def _looks_like_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


# ---------------------------------------------------------------------------------------------- checks


def _check_turns(turns: list[_Turn]) -> list[str]:
    """Every content problem, then the first role-order problem (later ones would only echo it)."""
    problems = [problem for turn in turns if (problem := _content_problem(turn))]
    order = _order_problem(turns)
    return problems + ([order] if order else [])


def _content_problem(turn: _Turn) -> str | None:
    if turn.content is None:
        return f"{turn.subject} is missing"
    if not isinstance(turn.content, str):
        return f"{turn.subject} must be a string, found {_describe(turn.content)}"
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


def _order_problem(turns: list[_Turn]) -> str | None:
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


def _who(turn: _Turn) -> str:
    return turn.name if turn.name == turn.role else f"{turn.name} ({turn.role})"


def _describe(value: Any) -> str:
    """A JSON-flavoured type name for messages: 'a string', 'a list', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string" if value.strip() else "an empty string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (bytes, bytearray)):
        return "binary data"
    return f"a {type(value).__name__} value"


def _shown(value: Any) -> str:
    """repr of a value from the file for a message, cut short: a column name may be megabytes long."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS - 4] + "...'"


def _shown_names(names: list) -> str:
    """The first 20 names (column names, keys) from the file, each cut short, for a message; "none" for none."""
    return ", ".join(map(_shown, names[:20])) + (", ..." if len(names) > 20 else "") or "none"


def _quoted(names, conjunction: str = "and") -> str:
    names = [repr(name) for name in names]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {conjunction} {names[-1]}"


# ---------------------------------------------------------------------------------------------- using the data


def usable_conversations(ds: LoadedDataset, drop_invalid: bool = False) -> list[Conversation]:
    """The good conversations; refuses a dataset with problems unless drop_invalid, and one with none left."""
    if not ds.conversations:
        raise DatasetError(f"{ds.path.name} has no usable conversations:\n{_listed(ds.problems)}", ds.problems)
    if ds.problems and not drop_invalid:
        raise DatasetError(
            f"{ds.path.name} has {len(ds.problems)} problem(s):\n{_listed(ds.problems)}\n"
            "Fix them, or pass drop_invalid / --drop-invalid to skip the invalid records.",
            ds.problems,
        )
    return list(ds.conversations)


def _listed(problems: list[Problem]) -> str:
    lines = [f"  {problem}" for problem in problems[:_MAX_LISTED_PROBLEMS]]
    if len(problems) > _MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - _MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)


def render_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """The conversation as the model sees it in training: the tokenizer's chat template, untokenised."""
    return tokenizer.apply_chat_template(messages, tokenize=False)


def token_stats(tokenizer, conversations: list[Conversation], max_length: int) -> TokenStats:
    """Token lengths of the rendered conversations (the template adds the special tokens itself)."""
    lengths = []
    for start in range(0, len(conversations), 256):
        batch = [render_text(tokenizer, c.messages) for c in conversations[start:start + 256]]
        lengths += [len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]]
    over = [c.record for c, length in zip(conversations, lengths) if length > max_length]
    if not lengths:
        return TokenStats(0, 0, 0, 0.0, 0.0, 0, max_length, over)
    ordered = sorted(lengths)
    p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]  # nearest rank
    return TokenStats(len(lengths), ordered[0], ordered[-1], round(statistics.fmean(lengths), 1),
                      statistics.median(ordered), p95, max_length, over)


def split_train_eval(
    conversations: list[Conversation], eval_size: float | int, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """A seeded random split; both parts keep the file's order.

    eval_size below 1 is a fraction (rounded, at least 1), from 1 up a count; 0 means no eval split. The train
    split always keeps at least one conversation, so a large eval_size is capped at all but one."""
    count = len(conversations)
    wanted = _eval_count(eval_size, count)
    n_eval = min(wanted, count - 1) if count else 0
    chosen = set(random.Random(seed).sample(range(count), n_eval))
    train = [c for i, c in enumerate(conversations) if i not in chosen]
    evaluation = [c for i, c in enumerate(conversations) if i in chosen]
    return train, evaluation


def _eval_count(eval_size: float | int, count: int) -> int:
    if isinstance(eval_size, bool) or not isinstance(eval_size, (int, float)) or not math.isfinite(eval_size):
        raise DatasetError(f"eval_size must be a number, got {eval_size!r}")
    if eval_size < 0:
        raise DatasetError(f"eval_size must not be negative, got {eval_size}")
    if eval_size == 0:
        return 0
    if eval_size < 1:
        return max(1, round(eval_size * count))
    if eval_size != int(eval_size):
        raise DatasetError(f"eval_size {eval_size} is neither a fraction below 1 nor a whole number of conversations")
    return int(eval_size)


def to_hf_dataset(conversations: list[Conversation]):
    """A datasets.Dataset with one column, "messages": what trl's SFTTrainer takes."""
    import datasets

    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    features = datasets.Features({"messages": datasets.List(message)})
    return datasets.Dataset.from_dict({"messages": [c.messages for c in conversations]}, features=features)


def report(ds: LoadedDataset, tokenizer=None, max_length: int = 2048) -> dict:
    """A JSON-ready summary: counts, problems, warnings and (with a tokenizer) token statistics."""
    tokens = asdict(token_stats(tokenizer, ds.conversations, max_length)) if tokenizer is not None else None
    return {
        "path": str(ds.path),
        "format": ds.format,
        "records": ds.records,
        "conversations": len(ds.conversations),
        "ok": ds.ok,
        "errors": [{"record": p.record, "message": p.message} for p in ds.problems],
        "warnings": list(ds.warnings),
        "tokens": tokens,
    }
