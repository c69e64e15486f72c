"""The five dataset formats, by their columns, and detecting which one a file holds.

  messages           {"messages": [{"role", "content"}], "tools"?}
  sharegpt           {"conversations": [{"from", "value"}], "tools"?, "system"?}
  alpaca             {"instruction", "input"?, "output", "system"?, "history"?}
  prompt_completion  {"prompt", "completion", "system"?}
  phi3_text          {"text": "<|user|>\\n...<|end|>\\n<|assistant|>\\n...<|end|>"}   (Phi-3 chat markup, markup.py)

A list of turns is read for what its turns are, whichever of the two keys holds it: {role, content} turns under
`conversations` are messages, {from, value} turns under `messages` are sharegpt (the key decides only when the
turns do not say: JSON text in a CSV cell, no object turns). A `text` column counts as phi3_text only when it holds
Phi-3 role tags; plain text is pre-training text, refused whole (kinds.py).

Detection: the format that most records match (a tie goes to the earlier one in FORMATS); records of another
shape each get a problem naming the missing columns (normalise.py). Columns of other names can be mapped to these
(columns.py). Other columns are ignored (a warning).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from .markup import has_phi3_markup
from .wording import shown_names

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "phi3_text")

# Columns of each format: the required ones identify it; anything else beside them is ignored with a warning.
REQUIRED = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "phi3_text": ("text",),
}
OPTIONAL = {
    "messages": ("tools",),
    "sharegpt": ("tools", "system"),
    "alpaca": ("input", "system", "history"),
    "prompt_completion": ("system",),
    "phi3_text": (),
}
TURN_LISTS = ("messages", "conversations")  # the keys a list of turns may be under, in the order they are looked for
TURN_FORMATS = ("messages", "sharegpt")  # the formats of a list of turns


def turn_list_key(record: dict) -> str | None:
    """The key of the record's list of turns; null counts as absent (a Parquet table has every column in every row)."""
    return next((key for key in TURN_LISTS if record.get(key) is not None), None)


def turn_list_format(turns: Any, key: str) -> str:
    """messages for {role, content} turns, sharegpt for {from, value} turns, by the first object turn; the key
    decides when no turn says."""
    if isinstance(turns, list):
        first = next((turn for turn in turns if isinstance(turn, dict)), {})
        if "role" in first:
            return "messages"
        if "from" in first:
            return "sharegpt"
    return "messages" if key == "messages" else "sharegpt"


def formats_matched(record: dict) -> list[str]:
    key = turn_list_key(record)
    matched = {turn_list_format(record[key], key)} if key else set()
    matched |= {fmt for fmt in ("alpaca", "prompt_completion") if all(record.get(k) is not None for k in REQUIRED[fmt])}
    if has_phi3_markup(record.get("text")):
        matched.add("phi3_text")
    return [fmt for fmt in FORMATS if fmt in matched]


def detect(records: list[dict]) -> str | None:
    """The format that most records match; a tie goes to the one listed first in FORMATS."""
    counts = Counter(fmt for record in records for fmt in formats_matched(record))
    if not counts:
        return None
    return max(FORMATS, key=lambda fmt: counts[fmt])  # max keeps the first of equals


def column_names(objects: list[tuple[int, dict]]) -> list:
    """Every column some record has, in the order they first appear."""
    return list(dict.fromkeys(key for _, row in objects for key in row))


def no_format_message(objects: list[tuple[int, dict]], suggestion: str) -> str:
    needs = ["+".join(map(repr, keys)) for fmt, keys in REQUIRED.items() if fmt != "phi3_text"]
    return (f"no known format: found columns {shown_names(column_names(objects))}; expected {', '.join(needs[:-1])}, "
            f"or {needs[-1]} (or 'text' holding Phi-3 chat markup); {suggestion}")


def ignored_columns_warning(objects: list[tuple[int, dict]], fmt: str, used: tuple[str, ...] = ()) -> list[str]:
    """A warning naming the columns the format does not read; `used`: columns read beside it (a KTO label)."""
    known = {*REQUIRED[fmt], *OPTIONAL[fmt], *used, *(TURN_LISTS if fmt in TURN_FORMATS else ())}
    ignored = [key for key in column_names(objects) if key not in known]
    if not ignored:
        return []
    return [f"ignored columns (not part of the {fmt} format): {shown_names(ignored)}"]
