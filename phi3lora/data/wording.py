"""How a problem's message names what it found in a file: a JSON-flavoured type name, a value or a list of names
cut short (a column name may be megabytes long: never echo it back whole), names joined with "and" or "or"."""
from __future__ import annotations

from typing import Any

from ..errors import shorten

MAX_SHOWN_NAMES = 20  # a message lists at most this many names from the file


def describe(value: Any) -> str:
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


def shown(value: Any) -> str:
    """repr of a value from the file for a message, cut short, its closing quote kept."""
    return shorten(value, end="...'")


def shown_names(names: list) -> str:
    """The first 20 names (column names, keys) from the file, each cut short, for a message; "none" for none."""
    listed = ", ".join(map(shown, names[:MAX_SHOWN_NAMES]))
    return listed + (", ..." if len(names) > MAX_SHOWN_NAMES else "") or "none"


def quoted(names, conjunction: str = "and") -> str:
    names = [repr(name) for name in names]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {conjunction} {names[-1]}"
