"""The one base class for errors a user causes and can fix: the CLI (and later the app) shows the message, not a traceback.
Also the one way a message quotes what the user sent: cut short (`shorten`)."""
from __future__ import annotations

from typing import Any

SHOWN_CHARS = 60  # how much of a user's value a message quotes: a name or a setting may be megabytes long


class UserError(Exception):
    """Something in the user's input or settings is wrong; the message says what, where, and what to do."""


def shorten(value: Any, limit: int = SHOWN_CHARS, *, as_repr: bool = True, end: str = "...") -> str:
    """A user's value as a message quotes it: its repr (as_repr=False: a string as it is), and when that is longer
    than `limit` characters, its start and then `end`, `limit` characters in all.

    shorten(value) is config.py's `shorten`; shorten(text, as_repr=False) the hub id's, quoted afterwards with !r;
    shorten(value, end="...'") the dataset reader's, which keeps a cut repr's closing quote."""
    text = repr(value) if as_repr else value
    return text if len(text) <= limit else text[:limit - len(end)] + end
