"""Preference files for DPO (data/preferences.py): trl's plain and conversational layouts and LLaMA-Factory's read
into pairs; hostile and malformed records refused with their record number and the field, nothing raised."""
import json

import pytest

from phi3lora.data import DatasetError
from phi3lora.data.preferences import MAX_TEXT_CHARS, read_preferences, to_dpo_rows

USER = [{"role": "user", "content": "Hi"}]


def _write(tmp_path, records, name="prefs.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_the_three_layouts_read_into_the_same_pairs(tmp_path):
    path = _write(tmp_path, [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": [{"role": "system", "content": "Be kind."}, *USER], "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
        {"chosen": [*USER, {"role": "assistant", "content": "Hello!"}],  # trl's implicit prompt
         "rejected": [*USER, {"role": "assistant", "content": "Go away."}]},
        {"conversations": [{"from": "human", "value": "Hi"}], "system": "Be kind.",  # LLaMA-Factory
         "chosen": {"from": "gpt", "value": "Hello!"}, "rejected": {"from": "gpt", "value": "Go away."}},
    ])
    loaded = read_preferences(path)
    assert loaded.problems == [] and loaded.records == 4
    system = [{"role": "system", "content": "Be kind."}, *USER]
    assert [(p.record, p.prompt) for p in loaded.pairs] == [(1, USER), (2, system), (3, USER), (4, system)]
    assert {(p.chosen, p.rejected) for p in loaded.pairs} == {("Hello!", "Go away.")}
    assert to_dpo_rows(loaded.pairs[:1]) == [{"prompt": USER, "chosen": [{"role": "assistant", "content": "Hello!"}],
                                              "rejected": [{"role": "assistant", "content": "Go away."}]}]


HOSTILE = [
    ({"prompt": "Hi", "rejected": "No."}, "'chosen' is missing: a preference record needs a chosen and a rejected answer"),
    ({"prompt": "Hi", "chosen": "Same.", "rejected": " Same. "}, "chosen and rejected are the same answer"),
    ({"prompt": "Hi", "chosen": "x" * (MAX_TEXT_CHARS + 1), "rejected": "No."},
     f"chosen is {MAX_TEXT_CHARS + 1:,} characters, over the {MAX_TEXT_CHARS:,} a text may hold"),
    ({"prompt": "Hi", "chosen": 42, "rejected": "No."}, "chosen must be a string, found a number"),
    ({"prompt": "Hi", "chosen": "Yes.", "rejected": {"text": "No."}}, "rejected must be a string, found an object"),
    ({"chosen": "Yes.", "rejected": "No."}, "'prompt' is missing"),
    ({"prompt": "   ", "chosen": "Yes.", "rejected": "No."}, "prompt is empty"),
    ({"conversations": "Hi", "chosen": "Yes.", "rejected": "No."}, "conversations must be a non-empty list of messages"),
    ({"conversations": [{"from": "wizard", "value": "Hi"}], "chosen": "Yes.", "rejected": "No."},
     "conversations message 1: unknown role 'wizard'"),
    ({"prompt": [*USER, {"role": "assistant", "content": "Hey"}], "chosen": [{"role": "assistant", "content": "A"}],
      "rejected": [{"role": "assistant", "content": "B"}]}, "assistant follows assistant"),
    ({"prompt": USER, "chosen": [{"role": "assistant", "content": "A"}, {"role": "assistant", "content": "B"}],
      "rejected": [{"role": "assistant", "content": "C"}]}, "chosen must hold one assistant message, found 2"),
    ({"chosen": [*USER, {"role": "assistant", "content": "A"}],
      "rejected": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "B"}]},
     "chosen and rejected must share every turn but the last"),
    ({"prompt": "Hi", "chosen": "A\ud800", "rejected": "B"}, "lone surrogate"),
    ([1, 2], "expected an object with prompt, chosen and rejected, found a list"),
    ('{"prompt": "Hi", "chosen": ', "not valid JSON"),
]


def test_hostile_records_are_refused_with_their_record_number(tmp_path):
    good = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}
    path = _write(tmp_path, [good, *(record for record, _ in HOSTILE)])
    loaded = read_preferences(path)
    assert [p.record for p in loaded.pairs] == [1]
    for number, (_, fragment) in enumerate(HOSTILE, 2):
        messages = [p.message for p in loaded.problems if p.record == number]
        assert any(fragment in m for m in messages), (number, fragment, messages)
    assert all(len(str(p)) < 400 for p in loaded.problems)  # no huge value is echoed back
    with pytest.raises(DatasetError, match=r"prefs.jsonl has 15 problem\(s\):\n  record 2: 'chosen' is missing"):
        loaded.usable()
    assert [p.record for p in loaded.usable(drop_invalid=True)] == [1]


def test_an_empty_or_unreadable_file_is_refused_whole(tmp_path):
    assert str(read_preferences(_write(tmp_path, [""], "empty.jsonl")).problems[0]) == "the file is empty"
    assert "file not found" in str(read_preferences(tmp_path / "missing.jsonl").problems[0])
    with pytest.raises(DatasetError, match="has no usable preference pairs"):
        read_preferences(tmp_path / "missing.jsonl").usable(drop_invalid=True)
