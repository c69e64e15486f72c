"""Reading a dataset file into rows: (record number, parsed value) for each record, and a Problem for each record
that does not parse. JSON Lines, JSON (an array, an object holding one, or a single record), CSV and Parquet; UTF-8
text with or without a byte order mark; anything else (UTF-16, archives, images, NUL bytes) is refused whole with
the reason and what to do.

Record numbers: the line number in a .jsonl file; the 1-based position elsewhere (array item, CSV data row,
Parquet row). A file of more records than PHI3LORA_MAX_RECORDS (policy/limits.py) is refused whole, as soon as reading
passes the limit.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ..policy import limits
from .dataset import Problem
from .formats import formats_matched
from .wording import describe, shown, shown_names

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")

# What a binary file that arrives under a text name starts with -> (what it is, what to do).
_SIGNATURES = {
    b"PK\x03\x04": ("a ZIP archive", "unpack it and upload the dataset file inside"),
    b"\x1f\x8b": ("gzip-compressed", "decompress it and upload the dataset file"),
    b"\xfd7zXZ\x00": ("xz-compressed", "decompress it and upload the dataset file"),
    b"PAR1": ("a Parquet file", "name it .parquet"),
    b"\x89PNG": ("a PNG image", "upload the dataset file"),
    b"\xff\xd8\xff": ("a JPEG image", "upload the dataset file"),
}


class Unreadable(Exception):
    """The whole file cannot be read; the message says why."""


def read_rows(path: Path) -> tuple[list[tuple[int, Any]], list[Problem]]:
    """(record number, parsed value) for each record, plus problems for records that did not parse."""
    if not path.exists():
        raise Unreadable(f"file not found: {path}")
    if not path.is_file():
        raise Unreadable(f"not a file: {path}")
    extension = path.suffix.lower()
    if extension not in SUPPORTED_EXTENSIONS:
        raise Unreadable(
            f"unsupported file type {extension or '(no extension)'!r}: use {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if path.is_symlink() and Path(os.path.realpath(path)).suffix.lower() != extension:
        # say nothing of the target: a link named data.csv must not read out /etc/passwd
        raise Unreadable(f"{path.name} is a link to a file that is not a {extension} dataset: use the file itself")
    if path.stat().st_size == 0:
        raise Unreadable("the file is empty")
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
        raise Unreadable("the file is UTF-16 text: save it as UTF-8 and upload it again")
    for signature, (what, advice) in _SIGNATURES.items():
        if raw.startswith(signature):
            raise Unreadable(f"the file is {what}, not JSON Lines, JSON or CSV text: {advice}")
    nul = raw.find(b"\0")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise Unreadable(f"the file does not look like a text file (it contains NUL bytes, the first at byte offset "
                          f"{nul}, line {line}): expected JSON Lines, JSON or CSV text")
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = bom + error.start
        line = raw.count(b"\n", 0, offset) + 1
        raise Unreadable(
            f"the file is not UTF-8 text: byte 0x{raw[offset]:02x} at byte offset {offset} (line {line}) "
            "is not UTF-8; save the file as UTF-8 and upload it again"
        ) from None
    if not text.strip():
        raise Unreadable("the file is empty")
    return text


def _looks_like_utf16(head: bytes) -> bool:
    """UTF-16 without a byte order mark: ASCII text then has a NUL in every other byte, and only there."""
    if len(head) < 4:
        return False
    even, odd = head[0::2], head[1::2]
    return any(a.count(0) > 0.6 * len(a) and b.count(0) < 0.1 * len(b) for a, b in ((even, odd), (odd, even)))


class NotJSON(Exception):
    """JSON text that cannot be read: .reason in plain words, .line and .column where the parser knows them."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None):
        super().__init__(reason)
        self.reason, self.line, self.column = reason, line, column

    def reason_at_column(self) -> str:
        return f"{self.reason} (column {self.column})" if self.column else self.reason


def loads(text: str) -> Any:
    """json.loads, with each way it fails (syntax, a number too long to convert, nesting) as a NotJSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise NotJSON(error.msg, error.lineno, error.colno) from None
    except ValueError:  # an integer over sys.get_int_max_str_digits(): json gives no position for it
        raise NotJSON(f"a number has more than {sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        raise NotJSON("it is nested too deeply to read") from None


def _over_the_record_limit(count: int | None = None) -> Unreadable:
    """Stop reading a file past PHI3LORA_MAX_RECORDS: loading millions of records would take minutes and gigabytes."""
    most = limits.limit("PHI3LORA_MAX_RECORDS")
    held = f"the dataset's record count is {count}" if count else f"the file holds more than {most} records"
    return Unreadable(f"{held}, over this server's limit of {most} (PHI3LORA_MAX_RECORDS)")


def _parse_jsonl(text: str) -> tuple[list[tuple[int, Any]], list[Problem]]:
    rows, problems, most = [], [], limits.limit("PHI3LORA_MAX_RECORDS")
    for number, line in _nonblank_lines(text):
        if len(rows) + len(problems) == most:
            raise _over_the_record_limit()
        try:
            rows.append((number, loads(line)))
        except NotJSON as error:
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
        data = loads(text)
    except NotJSON as error:
        if error.line is None:
            raise Unreadable(f"cannot read the JSON: {error.reason}") from None
        hint = "; if it holds one JSON object per line, name it .jsonl" if error.reason == "Extra data" else ""
        reason = error.reason.removesuffix(" at")  # "Unterminated string starting at" + " at line 3"
        raise Unreadable(f"not valid JSON: {reason} at line {error.line}, column {error.column}{hint}") from None
    if isinstance(data, dict):
        if formats_matched(data):
            data = [data]
        else:
            lists = [key for key, value in data.items() if isinstance(value, list)]
            if len(lists) != 1:
                raise Unreadable("expected a JSON array of records, or an object holding one list of records; "
                                  f"found an object with keys {shown_names(list(data))}")
            data = data[lists[0]]
    if not isinstance(data, list):
        raise Unreadable(f"expected a JSON array of records, found {describe(data)}")
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
            raise Unreadable(f"the CSV header repeats the column {shown(duplicates[0])}")
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
        raise Unreadable(f"not valid CSV near line {reader.line_num}: {error}") from None
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
        raise Unreadable(f"not a readable Parquet file: {error}") from None
