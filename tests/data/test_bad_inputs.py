"""Hostile and malformed dataset files: every one is refused by phi3lora.data with the record (or the file problem)
and a plain reason, nothing else is ever raised, nothing echoes the file's contents back, and each loads in
bounded time and memory (the big ones stop at PHI3LORA_MAX_RECORDS instead of reading millions of records).

The corpus: the small files of tests/data/bad/ (their expectations in tests/data/bad/EXPECTED.json), and the
entries of GENERATED below, made at test time because they are too big for git or are not plain files."""
from __future__ import annotations

import datetime
import gzip
import io
import json
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi3lora import data
from phi3lora.data import DatasetError
from phi3lora.data.samples import SAMPLES_DIR

BAD = Path(__file__).resolve().parent / "bad"
RECORD_LIMIT = 1000  # PHI3LORA_MAX_RECORDS while these tests run: the many-records entries go far past it
LOAD_SECONDS = 10.0  # the slowest entry loads in about 1 s alone; CI runs two test files at once on two cores
ROLES = {"system", "user", "assistant"}

GOOD = {"instruction": "Say hi", "output": "hi"}
GOOD_LINE = json.dumps(GOOD)


@dataclass(frozen=True)
class Expected:
    record: int | None  # the problem's record number; None for the whole file
    fragments: tuple[str, ...]  # all in that problem's message
    conversations: int  # good conversations loaded beside it
    contents: tuple[str, ...] = ()  # message contents that must load exactly as written
    secret: str | None = None  # text of the file (or of what it links to) no message may show


@dataclass(frozen=True)
class Generated:
    make: Callable[[Path], Path]  # writes the entry into a folder, returns its path
    expected: Expected


def _committed() -> dict[str, Expected]:
    manifest = json.loads((BAD / "EXPECTED.json").read_text(encoding="utf-8"))
    manifest.pop("_about")
    return {name: Expected(e["record"], tuple(e["fragments"]), e["conversations"], tuple(e.get("contents", ())))
            for name, e in manifest.items()}


COMMITTED = _committed()


# ---------------------------------------------------------------------------------------------- generators


def _write(name: str, content: bytes | str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path
    return make


def _lazy(name: str, content: Callable[[], bytes | str]) -> Callable[[Path], Path]:
    return lambda folder: _write(name, content())(folder)


def _huge_records() -> str:
    """40 MB in one good record, then a 20 MB record cut off in the middle of its string."""
    whole = json.dumps({"instruction": "Repeat", "output": "x" * 40_000_000})
    return whole + "\n" + '{"instruction": "Repeat", "output": "' + "y" * 20_000_000 + "\n"


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _zip_bomb() -> bytes:
    """100 MB of zeros deflated to about 100 KB; the loader must never unpack it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("data.json", "w") as member:
        chunk = b"0" * (4 << 20)
        for _ in range(25):
            member.write(chunk)
    return buffer.getvalue()


def _png() -> bytes:
    """A real 1x1 PNG."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def _parquet(name: str, table: Callable[[], pa.Table]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        pq.write_table(table(), folder / name)
        return folder / name
    return make


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _alpaca_table(outputs: list, output_type: pa.DataType | None = None) -> pa.Table:
    return pa.table({"instruction": pa.array(["Say hi"] * len(outputs)), "output": pa.array(outputs, output_type)})


def _tool_calls_as_binary() -> pa.Table:
    message = pa.struct([("role", pa.string()), ("content", pa.string()), ("tool_calls", pa.binary())])
    conversation = [{"role": "user", "content": "Weather?", "tool_calls": None},
                    {"role": "assistant", "content": None, "tool_calls": b"\x00\x01"},
                    {"role": "tool", "content": "3 degrees", "tool_calls": None},
                    {"role": "assistant", "content": "Cold.", "tool_calls": None}]
    return pa.table({"messages": pa.array([conversation], pa.list_(message))})


def _directory(name: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).mkdir()
        return folder / name
    return make


def _link(name: str, target: Path) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).symlink_to(target)
        return folder / name
    return make


def _passwd_secret() -> str | None:
    """The first line of /etc/passwd (root's): it must appear in no message."""
    passwd = Path("/etc/passwd")
    return passwd.read_text(errors="replace").splitlines()[0] if passwd.is_file() else None


ODD_NAME = "my data ✓ (copy) 日本語 Ünïcode.jsonl"
LIMIT_TEXT = f"over this server's limit of {RECORD_LIMIT} (PHI3LORA_MAX_RECORDS)"

GENERATED: dict[str, Generated] = {
    # big: the limits keep them fast
    "huge_records.jsonl": Generated(_lazy("huge_records.jsonl", _huge_records),
                                    Expected(2, ("line 2 is not valid JSON: Unterminated string",), 1)),
    "two_million_records.jsonl": Generated(_lazy("two_million_records.jsonl", lambda: (GOOD_LINE + "\n") * 2_000_000),
                                           Expected(None, (f"the file holds more than {RECORD_LIMIT} records, "
                                                           + LIMIT_TEXT,), 0)),
    "million_blank_lines.jsonl": Generated(_lazy("million_blank_lines.jsonl",
                                                 lambda: "\n" * 5_000_000 + "{" + "\n" * 5_000_000),
                                           Expected(5_000_001, ("line 5000001 is not valid JSON",), 0)),
    "million_records.json": Generated(_lazy("million_records.json",
                                            lambda: "[" + ",".join([GOOD_LINE] * 1_000_000) + "]"),
                                      Expected(None, ("the dataset's record count is 1000000, " + LIMIT_TEXT,), 0)),
    "million_rows.csv": Generated(_lazy("million_rows.csv", lambda: "instruction,output\n" + "Say hi,hi\n" * 1_000_000),
                                  Expected(None, (f"the file holds more than {RECORD_LIMIT} records, " + LIMIT_TEXT,),
                                           0)),
    "many_rows.parquet": Generated(_parquet("many_rows.parquet", lambda: _alpaca_table(["hi"] * 200_000)),
                                   Expected(None, ("the dataset's record count is 200000, " + LIMIT_TEXT,), 0)),
    # megabyte names echoed back would flood a page: messages cut them short
    "giant_header.csv": Generated(_lazy("giant_header.csv",
                                        lambda: "instruction" + "x" * 2_000_000 + ",output\nSay hi,hi\n"),
                                  Expected(None, ("no known format: found columns 'instructionxxxx",
                                                  "xxx...', 'output'; expected"), 0)),
    "giant_role.jsonl": Generated(
        _lazy("giant_role.jsonl", lambda: json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                    {"role": "assistant", "content": "hello"}]})
              + "\n" + json.dumps(
            {"messages": [{"role": "user" * 500_000, "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n"),
        Expected(2, ("turn 1: unknown role 'useruser", "...'; use 'system'"), 1)),
    # nested 100,000 deep
    "deeply_nested.json": Generated(_lazy("deeply_nested.json", lambda: _nested(100_000)),
                                    Expected(None, ("cannot read the JSON: it is nested too deeply to read",), 0)),
    "deeply_nested_line.jsonl": Generated(
        _lazy("deeply_nested_line.jsonl", lambda: GOOD_LINE + '\n{"instruction": ' + _nested(100_000) + "}\n"),
        Expected(2, ("line 2 is not valid JSON: it is nested too deeply to read",), 1)),
    "deeply_nested_cell.csv": Generated(
        _lazy("deeply_nested_cell.csv", lambda: "messages\n" + _nested(100_000) + "\n"),
        Expected(1, ("messages must be a list of {role, content} objects, found text that is not a JSON list",), 0)),
    "deeply_nested_tools.jsonl": Generated(
        _lazy("deeply_nested_tools.jsonl", lambda: json.dumps({
            "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
            "tools": _nested(100_000)}) + "\n"),
        Expected(1, ("tools is not valid JSON: it is nested too deeply to read",), 0)),
    # not text at all
    "zip_bomb.json": Generated(_lazy("zip_bomb.json", _zip_bomb),
                               Expected(None, ("the file is a ZIP archive, not JSON Lines, JSON or CSV text: "
                                               "unpack it",), 0)),
    "gzip_data.jsonl": Generated(_lazy("gzip_data.jsonl", lambda: gzip.compress((GOOD_LINE + "\n").encode() * 100)),
                                 Expected(None, ("the file is gzip-compressed, not JSON Lines",), 0)),
    "image.csv": Generated(_lazy("image.csv", _png), Expected(None, ("the file is a PNG image, not JSON Lines",), 0)),
    "photo.csv": Generated(_write("photo.csv", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(64)),
                           Expected(None, ("the file is a JPEG image",), 0)),
    "parquet_named.json": Generated(_lazy("parquet_named.json", lambda: _parquet_bytes(_alpaca_table(["hi"]))),
                                    Expected(None, ("the file is a Parquet file, not JSON Lines, JSON or CSV text: "
                                                    "name it .parquet",), 0)),
    # not a plain file, odd names
    "directory.json": Generated(_directory("directory.json"), Expected(None, ("not a file:", "directory.json"), 0)),
    "passwd_link.csv": Generated(_link("passwd_link.csv", Path("/etc/passwd")),
                                 Expected(None, ("passwd_link.csv is a link to a file that is not a .csv dataset",), 0,
                                          secret=_passwd_secret())),
    "passwd_link.jsonl": Generated(_link("passwd_link.jsonl", Path("/etc/passwd")),
                                   Expected(None, ("passwd_link.jsonl is a link to a file that is not a .jsonl",), 0,
                                            secret=_passwd_secret())),
    "dangling_link.json": Generated(_link("dangling_link.json", Path("/nonexistent/data.json")),
                                    Expected(None, ("file not found:", "dangling_link.json"), 0)),
    ODD_NAME: Generated(_write(ODD_NAME, GOOD_LINE + '\n{"instruction": "Say bye"}\n'),
                        Expected(2, ("missing 'output'",), 1)),
    # Parquet with odd types
    "int_columns.parquet": Generated(_parquet("int_columns.parquet", lambda: pa.table({"instruction": [1, 2],
                                                                                       "output": [3, 4]})),
                                     Expected(1, ("instruction must be a string, found a number",), 0)),
    "struct_output.parquet": Generated(_parquet("struct_output.parquet", lambda: _alpaca_table([{"text": "hi"}])),
                                       Expected(1, ("output must be a string, found an object",), 0)),
    "null_cells.parquet": Generated(_parquet("null_cells.parquet", lambda: _alpaca_table(["hi", None, "yo"])),
                                    Expected(2, ("missing 'output'",), 2)),
    "binary_output.parquet": Generated(_parquet("binary_output.parquet",
                                                lambda: _alpaca_table([b"hi", b"\xff\x00"], pa.binary())),
                                       Expected(1, ("output must be a string, found binary data",), 0)),
    "binary_tool_calls.parquet": Generated(_parquet("binary_tool_calls.parquet", _tool_calls_as_binary),
                                           Expected(1, ("tool_calls cannot be written as JSON text",), 0)),
    "timestamp_output.parquet": Generated(
        _parquet("timestamp_output.parquet", lambda: _alpaca_table([datetime.datetime(2026, 11, 23)])),
        Expected(1, ("output must be a string, found a datetime value",), 0)),
    "no_rows.parquet": Generated(_parquet("no_rows.parquet", lambda: _alpaca_table([], pa.string())),
                                 Expected(None, ("the file holds no records",), 0)),
    "truncated.parquet": Generated(_lazy("truncated.parquet", lambda: _parquet_bytes(_alpaca_table(["hi"] * 50))[:300]),
                                   Expected(None, ("not a readable Parquet file",), 0)),
}


# ---------------------------------------------------------------------------------------------- the corpus


@pytest.fixture(autouse=True)
def record_limit(monkeypatch):
    monkeypatch.setenv("PHI3LORA_MAX_RECORDS", str(RECORD_LIMIT))


def test_every_committed_file_has_an_expectation():
    files = {p.name for p in BAD.iterdir()} - {"EXPECTED.json"}
    assert files == set(COMMITTED)
    assert not set(COMMITTED) & set(GENERATED)


def _load(path: Path) -> tuple[data.LoadedDataset, float]:
    started = time.perf_counter()
    loaded = data.read_dataset(path)
    return loaded, time.perf_counter() - started


def _check(ds: data.LoadedDataset, expected: Expected, seconds: float) -> None:
    assert isinstance(ds, data.LoadedDataset)
    assert seconds < LOAD_SECONDS, f"loading took {seconds:.1f} s"
    wanted = [p for p in ds.problems if p.record == expected.record and all(f in p.message for f in expected.fragments)]
    assert wanted, f"no problem for record {expected.record} holding {expected.fragments}: {ds.problems}"
    assert len(ds.conversations) == expected.conversations, ds.problems
    assert not ds.ok
    for problem in ds.problems:  # short, printable, and never the file's contents
        assert 0 < len(problem.message) < 1000, problem.message[:200]
        problem.message.encode("utf-8")
        if expected.secret:
            assert expected.secret not in problem.message

    # the hand-off to training refuses it, naming the file and the record
    with pytest.raises(DatasetError) as refused:
        data.usable_conversations(ds)
    message = str(refused.value)
    assert message.startswith(ds.path.name) and f"  {wanted[0]}" in message
    assert refused.value.problems == ds.problems
    if expected.secret:
        assert expected.secret not in message

    # dropping the bad records keeps exactly the good ones, as chat messages
    if expected.conversations:
        kept = data.usable_conversations(ds, drop_invalid=True)
        assert [c.record for c in kept] == [c.record for c in ds.conversations]
        for conversation in kept:
            assert all(m["role"] in ROLES and isinstance(m["content"], str) for m in conversation.messages)
    else:
        with pytest.raises(DatasetError, match="has no usable conversations"):
            data.usable_conversations(ds, drop_invalid=True)
    loaded_texts = {m["content"] for c in ds.conversations for m in c.messages}
    assert set(expected.contents) <= loaded_texts, loaded_texts  # e.g. formula cells stay plain text


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_committed_bad_file(name):
    ds, seconds = _load(BAD / name)
    _check(ds, COMMITTED[name], seconds)


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_bad_file(tmp_path, name):
    entry = GENERATED[name]
    path = entry.make(tmp_path)
    assert path.name == name
    try:
        ds, seconds = _load(path)
        _check(ds, entry.expected, seconds)
    finally:
        if path.is_file() and not path.is_symlink():
            path.unlink()  # pytest keeps old tmp_paths: don't leave 60 MB files in them


# ---------------------------------------------------------------------------------------------- around the corpus


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_the_record_limit_is_exact(tmp_path, suffix):
    """RECORD_LIMIT records load; one more is refused before anything is normalised."""
    def write(count: int) -> Path:
        path = tmp_path / f"{count}{suffix}"
        if suffix == ".jsonl":
            path.write_text("\n" + (GOOD_LINE + "\n\n") * count)  # blank lines are not records
        elif suffix == ".json":
            path.write_text(json.dumps({"data": [GOOD] * count}))
        elif suffix == ".csv":
            path.write_text("instruction,output\n" + "Say hi,hi\n,\n" * count)  # nor are empty rows
        else:
            pq.write_table(_alpaca_table(["hi"] * count), path)
        return path

    at_limit = data.read_dataset(write(RECORD_LIMIT))
    assert at_limit.ok and len(at_limit.conversations) == RECORD_LIMIT
    over = data.read_dataset(write(RECORD_LIMIT + 1))
    assert over.conversations == [] and len(over.problems) == 1
    assert over.problems[0].record is None and over.problems[0].message.endswith(LIMIT_TEXT)


def test_a_link_to_a_dataset_of_the_same_type_still_loads(tmp_path):
    link = tmp_path / "identity.jsonl"
    link.symlink_to(SAMPLES_DIR / "identity.jsonl")
    assert data.read_dataset(link).ok


def test_an_odd_file_name_is_named_as_it_is(tmp_path):
    ds = data.read_dataset(GENERATED[ODD_NAME].make(tmp_path))
    with pytest.raises(DatasetError) as refused:
        data.usable_conversations(ds)
    assert str(refused.value).startswith(f"{ODD_NAME} has 1 problem(s):\n  record 2: missing 'output'")


def test_formula_cells_are_plain_text(tmp_path):
    """CSV cells that a spreadsheet would run (=, +, -, @, a leading tab) reach the model exactly as written."""
    ds = data.read_dataset(BAD / "formula_cells.csv")
    first, second = (c.messages for c in ds.conversations)
    assert first == [{"role": "user", "content": "=cmd|' /C calc'!A0"}, {"role": "assistant", "content": "+1+1"}]
    assert second == [{"role": "user", "content": "-2+3\n\n@SUM(A1:A2)"},
                      {"role": "assistant", "content": '=HYPERLINK("http://example.invalid","click")'}]


def test_the_corpus_is_big_enough():
    """Issue 8 asks for at least 45 hostile files; count them so a cleanup cannot quietly shrink the corpus."""
    assert len(COMMITTED) + len(GENERATED) >= 45
