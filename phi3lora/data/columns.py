"""Column mapping: a file's own column names read as the names the formats know (formats.py).

  explicit   `prompt=question,completion=answer` (--columns, the job's data.columns, the Data tab): TARGET=COLUMN
             pairs, each target one of TARGETS at most once, each column of the file mapped at most once. A
             mapped column replaces a column of the target's name; a column the file does not have is a problem.
  automatic  when no format matches and nothing is mapped explicitly, common names map without asking if exactly
             one column fits each side (names compared without case):
               prompt     <- prompt, question, query, input, instruction
               completion <- completion, response, answer, output
               system     <- system_prompt, system_message
             `instruction` (with or without `input`) and one answer column make alpaca (output <- the answer).
             A warning says what was mapped; when nothing fits, the refusal suggests the mapping to pass.

`parse_columns` is what a form or a flag calls with the user's text; `check_columns` takes a mapping (config.yaml).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .dataset import DatasetError
from .wording import describe, shown, shown_names

TARGETS = ("prompt", "completion", "system", "instruction", "input", "output", "history", "messages",
           "conversations", "tools", "text")
MAX_MAPPING_CHARS = 10_000  # a mapping of every target to long column names fits; a pasted file does not
EXAMPLE = "prompt=question,completion=answer"

_PROMPT_NAMES = ("prompt", "question", "query", "input", "instruction")
_ANSWER_NAMES = ("completion", "response", "answer", "output")
_SYSTEM_NAMES = ("system_prompt", "system_message")


class ColumnsError(DatasetError):
    """A column mapping that cannot be read; the message names the part that is wrong."""


def parse_columns(text: str | None) -> dict[str, str]:
    """'prompt=question,completion=answer' -> {"prompt": "question", "completion": "answer"}; empty text -> {}.
    Names are stripped of surrounding spaces; a ColumnsError names the first bad part."""
    if text is None:
        return {}
    if not isinstance(text, str):
        raise ColumnsError(f"column mapping: expected text such as {EXAMPLE}, found {describe(text)}")
    if not text.strip():
        return {}
    if len(text) > MAX_MAPPING_CHARS:
        raise ColumnsError(f"column mapping: {len(text):,} characters, over the {MAX_MAPPING_CHARS:,} a mapping may "
                           f"take; write it as {EXAMPLE}")
    pairs = []
    for part in text.split(","):
        if not part.strip():
            continue  # a trailing comma
        target, equals, column = (piece.strip() for piece in part.partition("="))
        if not equals or not target or not column or "=" in column:
            raise ColumnsError(f"column mapping: {shown(part.strip())} is not TARGET=COLUMN; write it as {EXAMPLE}")
        pairs.append((target, column))
    _refuse_twice(pairs, "target")  # a dict would silently keep the last of the two
    return check_columns(dict(pairs))


def check_columns(mapping: Any) -> dict[str, str]:
    """A target -> column mapping checked: known targets, non-empty column names, no column mapped twice."""
    if mapping is None:
        return {}
    if isinstance(mapping, str):
        return parse_columns(mapping)
    if not isinstance(mapping, Mapping):
        raise ColumnsError(f"column mapping: expected TARGET=COLUMN pairs such as {EXAMPLE}, found {describe(mapping)}")
    for target, column in mapping.items():
        if target not in TARGETS:
            raise ColumnsError(f"column mapping: unknown target {shown(target)}; columns map to {', '.join(TARGETS)} "
                               f"(TARGET=COLUMN, e.g. {EXAMPLE})")
        if not isinstance(column, str) or not column.strip():
            raise ColumnsError(f"column mapping: {target} must name a column of the file, found {describe(column)}")
    _refuse_twice([(column, target) for target, column in mapping.items()], "column")
    return dict(mapping)


def _refuse_twice(pairs: list[tuple[str, str]], noun: str) -> None:
    """Refuse a name that appears first in two pairs: a target given two columns, or a column given two targets."""
    seen: dict[str, str] = {}
    for name, other in pairs:
        if name in seen:
            raise ColumnsError(f"column mapping: the {noun} {shown(name)} is mapped twice ({shown(seen[name])} and "
                               f"{shown(other)}); map each {noun} once")
        seen[name] = other


def apply_columns(objects: list[tuple[int, dict]], mapping: Mapping[str, str],
                  columns: list) -> tuple[list[tuple[int, dict]], list[str], list[str]]:
    """The records with their mapped columns renamed, problems (a mapped column the file lacks) and warnings (a
    column of a target's name that the mapping replaces); `columns`: formats.column_names(objects)."""
    present = set(columns)
    absent = [(target, column) for target, column in mapping.items() if column not in present]
    if absent:
        target, column = absent[0]
        return objects, [f"column mapping {target}={shown(column)}: the file has no column {shown(column)}; its columns "
                         f"are {shown_names(columns)}"], []
    sources = set(mapping.values())
    replaced = [target for target in mapping if target in present and target not in sources]
    renamed = [(number, _renamed(row, mapping, sources)) for number, row in objects]
    warnings = [f"the file's own {shown(target)} column is left out: the column mapping reads "
                f"{shown(mapping[target])} as {target}" for target in replaced]
    return renamed, [], warnings


def _renamed(row: dict, mapping: Mapping[str, str], sources: set[str]) -> dict:
    kept = {key: value for key, value in row.items() if key not in sources and key not in mapping}
    return kept | {target: row[column] for target, column in mapping.items() if column in row}


def guess_columns(columns: list) -> dict[str, str]:
    """The mapping that common names make without asking, or {} when none fits or it is ambiguous."""
    named = [column for column in columns if isinstance(column, str)]
    prompts = [c for c in named if c.lower() in _PROMPT_NAMES]
    answers = [c for c in named if c.lower() in _ANSWER_NAMES]
    if len(answers) != 1:
        return {}
    if prompts and {c.lower() for c in prompts} <= {"instruction", "input"} and "instruction" in map(str.lower, prompts):
        mapping = {"output": answers[0], **{c.lower(): c for c in prompts}}  # alpaca, its answer named otherwise
    elif len(prompts) == 1:
        mapping = {"prompt": prompts[0], "completion": answers[0]}
    else:
        return {}
    systems = [c for c in named if c.lower() in (*_SYSTEM_NAMES, "system")]
    if len(systems) == 1:
        mapping["system"] = systems[0]
    return {target: column for target, column in mapping.items() if target != column}


def guessed_warning(mapping: Mapping[str, str]) -> str:
    read = ", ".join(f"{shown(column)} as {target}" for target, column in mapping.items())
    return f"columns read by their names: {read} (map them otherwise with --columns)"


def suggested_mapping(columns: list) -> str:
    """The advice a refusal for unknown columns ends with: the --columns mapping that would read the file as
    prompt and completion, naming its likeliest columns."""
    usable = [c for c in columns if isinstance(c, str) and c.strip() and len(c) <= 60 and not set(c) & set(",=\n")]
    prompt = next((c for c in usable if c.lower() in _PROMPT_NAMES), usable[0] if usable else "COLUMN")
    rest = [c for c in usable if c != prompt]
    completion = next((c for c in rest if c.lower() in _ANSWER_NAMES), rest[0] if rest else "COLUMN")
    return f"map them with --columns prompt={prompt},completion={completion}"
