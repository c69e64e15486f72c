"""The datasets that ship with phi3lora (phi3lora/samples/, data/samples.py): each reads with no problem in the
format it shows, and the identity sample fills in a typed name and maker as plain text."""
import json

import pytest

from phi3lora import data
from phi3lora.data import samples
from phi3lora.errors import UserError


@pytest.mark.parametrize("sample, fmt, count", [(samples.IDENTITY, "messages", 90),
                                                (samples.MULTI_TURN, "sharegpt", 24),
                                                (samples.TOOL_CALLS, "messages", 21)])
def test_every_shipped_sample_reads_cleanly_in_its_format(sample, fmt, count):
    assert samples.shipped_samples()[sample.file] == sample
    ds = data.read_dataset(sample.path)
    assert (ds.format, ds.records, len(ds.conversations)) == (fmt, count, count)
    assert ds.ok and ds.problems == [] and ds.warnings == []
    assert str(count) in sample.what  # the one line the list shows tells the truth


def test_the_multi_turn_sample_has_two_to_four_exchanges_and_some_system_prompts():
    conversations = data.read_dataset(samples.MULTI_TURN.path).conversations
    exchanges = [sum(m["role"] == "assistant" for m in c.messages) for c in conversations]
    assert min(exchanges) == 2 and max(exchanges) <= 4
    assert 0 < sum(c.messages[0]["role"] == "system" for c in conversations) < len(conversations)


def test_the_tool_sample_calls_tools_reads_their_results_and_answers():
    conversations = data.read_dataset(samples.TOOL_CALLS.path).conversations
    for conversation in conversations:
        assert conversation.messages[0]["content"].startswith(data.TOOLS_HEADER)  # every record offers tools
        assert conversation.messages[-1]["role"] == "assistant"
        assert not conversation.messages[-1]["content"].startswith("Function call:")  # a final answer
    calling = [c for c in conversations if any(m["content"].startswith("Function call:\n") for m in c.messages)]
    assert len(calling) >= len(conversations) - 2  # a couple answer without a tool, as they should
    assert all(any(m["content"].startswith("Function result:\n") for m in c.messages) for c in calling)


def test_fill_identity_puts_the_typed_name_into_every_answer(tmp_path):
    written = samples.fill_identity(tmp_path, 'Dr. "Q" \\ Bot', "Ünïcode Ltd")
    assert written.parent == tmp_path and written.suffix == ".jsonl"
    answers = [json.loads(line)["messages"][1]["content"] for line in written.open(encoding="utf-8")]
    assert len(answers) == 90 and all("{{" not in answer for answer in answers)
    assert all('Dr. "Q" \\ Bot' in a or "Ünïcode Ltd" in a for a in answers)  # a quote is just text
    assert data.read_dataset(written).ok
    defaults = samples.fill_identity(tmp_path / "defaults").read_text(encoding="utf-8")
    assert samples.DEFAULT_NAME in defaults and samples.DEFAULT_AUTHOR in defaults


@pytest.mark.parametrize("name, fragment", [("x" * 61, "at most 60"), ("two\nlines", "one line"),
                                            ("{{author}}", "'{{' or '}}'")])
def test_fill_identity_refuses_what_is_not_a_short_visible_name(tmp_path, name, fragment):
    with pytest.raises(UserError, match="name") as refused:
        samples.fill_identity(tmp_path, name)
    assert fragment in str(refused.value) and not list(tmp_path.iterdir())
