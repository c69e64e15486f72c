"""Property-based fuzzing of phi3lora.data: whatever a file holds, read_dataset returns a LoadedDataset, and
usable_conversations either hands over chat messages (roles system/user/assistant, content valid Unicode text)
or refuses with a DatasetError that says why. Any other exception is a bug in phi3lora.data.

Profiles: "ci" (the default) runs a fixed, repeatable set of examples in a few seconds; for a long random hunt run
PHI3LORA_FUZZ_PROFILE=deep .venv/bin/python -m pytest -n 0 tests/data/test_fuzz_loader.py"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phi3lora import data
from phi3lora.data import DatasetError

settings.register_profile("ci", max_examples=500, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("deep", max_examples=20_000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ = settings.get_profile(os.environ.get("PHI3LORA_FUZZ_PROFILE", "ci"))  # 500 examples per test in CI: 1,000
ROLES = {"system", "user", "assistant"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_the_property(path: Path) -> None:
    ds = data.read_dataset(path)  # must not raise
    assert isinstance(ds, data.LoadedDataset) and ds.records >= 0
    for problem in ds.problems:
        assert isinstance(problem.message, str) and problem.message
        assert problem.record is None or (isinstance(problem.record, int) and problem.record >= 1)
        problem.message.encode("utf-8")  # printable anywhere: a page, a log, a terminal
    for drop_invalid in (False, True):
        try:
            conversations = data.usable_conversations(ds, drop_invalid=drop_invalid)
        except DatasetError as refused:
            assert str(refused) and refused.problems == ds.problems
            continue
        assert conversations
        for conversation in conversations:
            for message in conversation.messages:
                assert set(message) == {"role", "content"} and message["role"] in ROLES
                assert isinstance(message["content"], str) and message["content"].strip()
                message["content"].encode("utf-8")  # a lone surrogate would break the tokenizer later


# ---------------------------------------------------------------------------------------------- (a) any bytes


_JSON_PIECES = ['{', '}', '[', ']', ',', ':', '"', '\\', '\\u', 'd800', '"messages"', '"role"', '"content"',
                '"user"', '"assistant"', '"instruction"', '"output"', '"conversations"', '"from"', '"value"',
                '"prompt"', '"completion"', '"tools"', 'null', 'true', 'NaN', '-Infinity', '1e999', '0', '\n', '\r\n',
                ' ', '\ufeff', '\u2028', 'é', '🙂']
_CSV_PIECES = [',', '"', '""', '\n', '\r\n', 'instruction', 'output', 'input', 'messages', 'prompt', 'completion',
               '=cmd|', '+1', '-1', '@SUM', 'é', '\t', ' ']

any_bytes = st.one_of(
    st.binary(max_size=600),
    st.lists(st.sampled_from(_JSON_PIECES), max_size=80).map(lambda pieces: "".join(pieces).encode("utf-8")),
    st.lists(st.sampled_from(_CSV_PIECES), max_size=80).map(lambda pieces: "".join(pieces).encode("utf-8")),
    st.text(max_size=200).map(lambda text: text.encode("utf-8")),
    st.tuples(st.text(max_size=100), st.sampled_from(["utf-16", "utf-16-le", "latin-1", "utf-8-sig", "utf-32"]))
    .map(lambda pair: pair[0].encode(pair[1], errors="replace")),
)


@FUZZ
@given(content=any_bytes, suffix=st.sampled_from([".json", ".jsonl", ".csv"]))
def test_any_bytes_are_read_or_refused_in_words(folder, content, suffix):
    path = folder / f"bytes{suffix}"
    path.write_bytes(content)
    check_the_property(path)


# ---------------------------------------------------------------------------------------------- (b) near-datasets


# Text as a dataset holds it, plus the odd: controls, zero-width and format characters, lone surrogates.
plain = st.text(st.characters(categories=["L", "N", "P"]), min_size=1, max_size=12)
odd = st.text(st.characters(codec=None, categories=None, exclude_categories=()), min_size=1, max_size=8)
content = st.one_of(plain, plain, plain, odd, st.sampled_from(["", " \n", "\u200b", "\ufeff", "[]", "[1]", "null"]))
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), content)
junk = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(content, inner, max_size=3)), max_leaves=6)
# JSON text no Python value can be dumped as: swapped in after json.dumps (see _inject)
HOSTILE = {"__BIG__": "9" * 5000, "__DEEP__": "[" * 5000 + "]" * 5000, "__NAN__": "NaN", "__INF__": "-Infinity"}
hostile = st.sampled_from(sorted(HOSTILE))


@st.composite
def chat(draw, system: bool = True) -> list[tuple[str, str]]:
    """(role, text) turns: maybe a system turn, then user and assistant alternating."""
    turns = [("system", draw(content))] if system and draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        turns += [("user", draw(content)), ("assistant", draw(content))]
    return turns


@st.composite
def messages_record(draw) -> dict:
    turns = [{"role": role, "content": text} for role, text in draw(chat())]
    if draw(st.booleans()):  # a tool call and its result before the last answer
        call = {"type": "function", "function": {"name": draw(plain), "arguments": draw(st.one_of(
            st.just('{"city": "Oslo"}'), content, junk))}}
        turns[-1:-1] = [{"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "content": draw(content)}]
    record = {"messages": turns}
    if draw(st.booleans()):
        record["tools"] = draw(st.one_of(st.just([{"name": "f", "parameters": {}}]), content, junk))
    return record


@st.composite
def sharegpt_record(draw) -> dict:
    names = {"system": "system", "user": draw(st.sampled_from(["human", "user"])),
             "assistant": draw(st.sampled_from(["gpt", "assistant"]))}
    turns = [{"from": names[role], "value": text} for role, text in draw(chat())]
    if draw(st.booleans()):
        turns[-1:-1] = [{"from": "function_call", "value": '{"name": "f", "arguments": {}}'},
                        {"from": "observation", "value": draw(content)}]
    record = {"conversations": turns}
    for key in ("system", "tools"):
        if draw(st.booleans()):
            record[key] = draw(st.one_of(content, junk))
    return record


@st.composite
def alpaca_record(draw) -> dict:
    record = {"instruction": draw(content), "output": draw(content)}
    if draw(st.booleans()):
        record["input"] = draw(content)
    if draw(st.booleans()):
        record["system"] = draw(content)
    if draw(st.booleans()):
        record["history"] = draw(st.lists(st.lists(content, min_size=2, max_size=2), max_size=2))
    return record


@st.composite
def prompt_completion_record(draw) -> dict:
    if draw(st.booleans()):
        return {"prompt": draw(content), "completion": draw(content)}
    turns = [{"role": role, "content": text} for role, text in draw(chat())]
    return {"prompt": turns[:-1], "completion": turns[-1:]}


FORMATS = {"messages": messages_record(), "sharegpt": sharegpt_record(), "alpaca": alpaca_record(),
           "prompt_completion": prompt_completion_record()}


def _places(node, path=()):
    """Every (path, value) in a JSON tree: the places a mutation can hit."""
    yield path, node
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _places(child, (*path, key))


def _set(node, path, value):
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@st.composite
def mutated_record(draw):
    """A valid record of one of the four formats, then up to three mutations anywhere in it: a value swapped for
    junk or hostile JSON text, a key dropped or added, a list item dropped or repeated (two users in a row)."""
    record = draw(st.sampled_from(sorted(FORMATS)).flatmap(FORMATS.get))
    for _ in range(draw(st.integers(0, 3))):
        path, node = draw(st.sampled_from(list(_places(record))))
        kind = draw(st.sampled_from(["swap", "hostile", "drop", "add", "repeat"]))
        if kind in ("swap", "hostile") and path:
            _set(record, path, draw(junk if kind == "swap" else hostile))
        elif kind == "drop" and isinstance(node, (dict, list)) and node:
            del node[draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))]
        elif kind == "add" and isinstance(node, dict):
            node[draw(st.one_of(st.sampled_from(["id", "messages", "output", "prompt", "tools", "role"]), content))] = \
                draw(junk)
        elif kind == "repeat" and isinstance(node, list) and node:
            node.insert(draw(st.integers(0, len(node))), node[draw(st.integers(0, len(node) - 1))])
    return record


def _inject(text: str) -> str:
    for placeholder, raw in HOSTILE.items():
        text = text.replace(f'"{placeholder}"', raw)
    return text


records = st.lists(st.one_of(mutated_record(), mutated_record(), mutated_record(), junk), max_size=5)


def write_records(path: Path, items: list) -> Path:
    """JSON Lines, a JSON array, CSV (lists and objects as JSON text) or Parquet (where Arrow can type it)."""
    if path.suffix == ".jsonl":
        text = "".join(_inject(json.dumps(item)) + "\n" for item in items)
    elif path.suffix == ".json":
        text = _inject(json.dumps(items))
    elif path.suffix == ".csv":
        objects = [item for item in items if isinstance(item, dict)]
        columns = list(dict.fromkeys(key for item in objects for key in item))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for item in objects:
            writer.writerow(["" if v is None else _inject(json.dumps(v)) if isinstance(v, (list, dict)) else v
                             for v in (item.get(c) for c in columns)])
        text = buffer.getvalue()
    else:
        path.write_bytes(_parquet(items))
        return path
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))  # a raw surrogate is not UTF-8: refused
    return path


def _parquet(items: list) -> bytes | None:
    """The records as a Parquet file, or None where Arrow cannot type them (mixed types in a column)."""
    if not items or not all(isinstance(item, dict) and item for item in items):
        return None
    buffer = io.BytesIO()
    try:
        pq.write_table(pa.Table.from_pylist(items), buffer)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    return buffer.getvalue()


@FUZZ
@given(items=records, suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_near_datasets_are_read_or_refused_in_words(folder, items, suffix):
    if suffix == ".parquet" and _parquet(items) is None:
        suffix = ".jsonl"
    check_the_property(write_records(folder / f"records{suffix}", items))
