"""read_dataset: a file in, a LoadedDataset out: its rows read (files.py), its format detected (formats.py), each
record normalised to chat messages and checked (normalise.py, turns.py). Bad content never raises: it becomes a
Problem with the record number and a plain reason.
"""
from __future__ import annotations

from pathlib import Path

from .dataset import Conversation, DatasetError, LoadedDataset, Problem
from .files import Unreadable, read_rows
from .formats import FORMATS, detect, ignored_columns_warning, no_format_message
from .normalise import normalise
from .turns import Invalid
from .wording import describe


def read_dataset(path: str | Path, format: str = "auto") -> LoadedDataset:
    """Load, detect, normalise and check a dataset file. Raises DatasetError only for a bad `format` argument."""
    format = format or "auto"
    if format not in ("auto", *FORMATS):
        raise DatasetError(f"unknown dataset format {format!r}: choose auto, {', '.join(FORMATS)}")
    path = Path(path)
    try:
        rows, problems = read_rows(path)
    except Unreadable as error:
        return LoadedDataset(path, None, 0, [], [Problem(None, str(error))])
    except OSError as error:  # no permission, a read error
        return LoadedDataset(path, None, 0, [], [Problem(None, f"cannot read the file: {error}")])
    records = len(rows) + len(problems)  # reading problems are records that did not parse
    objects = [(number, row) for number, row in rows if isinstance(row, dict)]
    problems += [
        Problem(number, f"expected an object with named fields, found {describe(row)}")
        for number, row in rows
        if not isinstance(row, dict)
    ]

    detected = detect([row for _, row in objects]) if format == "auto" else format
    conversations: list[Conversation] = []
    if detected is None:
        if objects:
            problems.append(Problem(None, no_format_message(objects)))
        elif not records:
            problems.append(Problem(None, "the file holds no records"))
    else:
        for number, row in objects:
            try:
                conversations.append(Conversation(number, normalise(row, detected)))
            except Invalid as invalid:
                problems += [Problem(number, message) for message in invalid.messages]
            except RecursionError:  # JSON text in a cell, or tools, nested deeper than Python goes
                problems.append(Problem(number, "a value is nested too deeply to read"))

    problems.sort(key=lambda p: (p.record is not None, p.record or 0))  # stable: a record's problems stay in order
    warnings = ignored_columns_warning(objects, detected) if detected else []
    return LoadedDataset(path, detected, records, conversations, problems, warnings)
