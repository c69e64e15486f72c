"""The four dataset formats, by their columns, and detecting which one a file holds.

  messages           {"messages": [{"role", "content"}], "tools"?}
  sharegpt           {"conversations": [{"from", "value"}], "tools"?, "system"?}
  alpaca             {"instruction", "input"?, "output", "system"?, "history"?}
  prompt_completion  {"prompt", "completion"}

Detection: the format whose required columns most records have (a tie goes to the earlier one in FORMATS);
records of another shape each get a problem naming the missing columns (normalise.py). Other columns are ignored
(a warning).
"""
from __future__ import annotations

from collections import Counter

from .wording import shown_names

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")

# Columns of each format: the required ones identify it; anything else beside them is ignored with a warning.
REQUIRED = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}
OPTIONAL = {
    "messages": ("tools",),
    "sharegpt": ("tools", "system"),
    "alpaca": ("input", "system", "history"),
    "prompt_completion": (),
}

def formats_matched(record: dict) -> list[str]:
    # null counts as absent: a Parquet table has every column in every row
    return [fmt for fmt in FORMATS if all(record.get(key) is not None for key in REQUIRED[fmt])]


def detect(records: list[dict]) -> str | None:
    """The format that most records match; a tie goes to the one listed first in FORMATS."""
    counts = Counter(fmt for record in records for fmt in formats_matched(record))
    if not counts:
        return None
    return max(FORMATS, key=lambda fmt: counts[fmt])  # max keeps the first of equals


def no_format_message(objects: list[tuple[int, dict]]) -> str:
    found = shown_names(list(dict.fromkeys(key for _, row in objects for key in row)))
    needs = ["+".join(map(repr, keys)) for keys in REQUIRED.values()]
    return f"no known format: found columns {found}; expected {', '.join(needs[:-1])}, or {needs[-1]}"


def ignored_columns_warning(objects: list[tuple[int, dict]], fmt: str) -> list[str]:
    known = {*REQUIRED[fmt], *OPTIONAL[fmt]}
    ignored = list(dict.fromkeys(key for _, row in objects for key in row if key not in known))
    if not ignored:
        return []
    return [f"ignored columns (not part of the {fmt} format): {shown_names(ignored)}"]
