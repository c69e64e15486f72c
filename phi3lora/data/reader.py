"""read_dataset: a file in, a LoadedDataset out: its rows read (files.py), its columns mapped (columns.py), what it
holds told apart from chat data (kinds.py: preference pairs, images, pre-training text... refused in one line),
records labelled false in a KTO `label` column left out, its format detected (formats.py), each record normalised
to chat messages and checked (normalise.py, turns.py). Bad content never raises: it becomes a Problem with the
record number (None: the whole file) and a plain reason.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from . import kinds
from .columns import apply_columns, check_columns, guess_columns, guessed_warning, suggested_mapping
from .dataset import Conversation, DatasetError, LoadedDataset, Problem
from .files import Unreadable, read_rows
from .formats import FORMATS, column_names, detect, ignored_columns_warning, no_format_message
from .normalise import normalise
from .turns import Invalid
from .wording import describe


def read_dataset(path: str | Path, format: str = "auto", *,
                 columns: Mapping[str, str] | str | None = None) -> LoadedDataset:
    """Load, detect, normalise and check a dataset file. `columns`: a TARGET -> COLUMN mapping, or its text
    "prompt=question,completion=answer" (columns.parse_columns). Raises DatasetError only for a bad `format` or
    `columns` argument."""
    format = format or "auto"
    if format not in ("auto", *FORMATS):
        raise DatasetError(f"unknown dataset format {format!r}: choose auto, {', '.join(FORMATS)}")
    mapping = check_columns(columns)
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

    warnings: list[str] = []
    if mapping:
        objects, mapping_problems, mapping_warnings = apply_columns(objects, mapping, column_names(objects))
        problems += [Problem(None, message) for message in mapping_problems]
        warnings += mapping_warnings
    record_kinds = {number: kind for number, row in objects if (kind := kinds.record_kind(row))}
    kind = kinds.most_common_kind([record_kinds.get(number) for number, _ in objects])
    if kind and not any(p.record is None for p in problems):
        mine = [row for number, row in objects if record_kinds.get(number) == kind]
        problems.append(Problem(None, kinds.file_refusal(kind, mine)))
    if any(p.record is None for p in problems):  # the whole file is refused in one line: no record is read further
        return LoadedDataset(path, None, records, [], _in_order(problems), warnings)

    objects, left_out = kinds.kto_split(objects)
    if left_out:
        warnings.append(kinds.kto_warning(left_out, records))
    detected = detect([row for _, row in objects]) if format == "auto" else format
    if detected is None and not mapping and (guessed := guess_columns(column_names(objects))):
        objects, _, _ = apply_columns(objects, guessed, column_names(objects))
        detected = detect([row for _, row in objects])
        warnings.append(guessed_warning(guessed))
    conversations: list[Conversation] = []
    if detected is None:
        if objects:
            problems.append(Problem(None, no_format_message(objects, suggested_mapping(column_names(objects)))))
        elif not records:
            problems.append(Problem(None, "the file holds no records"))
    else:
        for number, row in objects:
            if number in record_kinds:
                problems.append(Problem(number, kinds.record_problem(record_kinds[number])))
                continue
            try:
                conversations.append(Conversation(number, normalise(row, detected)))
            except Invalid as invalid:
                problems += [Problem(number, message) for message in invalid.messages]
            except RecursionError:  # JSON text in a cell, or tools, nested deeper than Python goes
                problems.append(Problem(number, "a value is nested too deeply to read"))

    if detected:
        warnings += ignored_columns_warning(objects, detected, ("label",) if left_out is not None else ())
    return LoadedDataset(path, detected, records, conversations, _in_order(problems), warnings)


def _in_order(problems: list[Problem]) -> list[Problem]:
    """The file's problems first, then each record's; stable: a record's problems stay in order."""
    return sorted(problems, key=lambda p: (p.record is not None, p.record or 0))
