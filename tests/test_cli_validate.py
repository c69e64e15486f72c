"""`validate` as a user meets it: a quick start without torch, the max length training would use on this machine,
what trl's truncation leaves of each over-length conversation, no library warnings, a capped text report."""
import json
import os
import subprocess
import sys

import pytest

from conftest import DEMO_MODEL, REPO
from phi3lora import data
from phi3lora.data.truncation import measure
from phi3lora.plain_tokenizer import PlainTokenizer
from phi3lora.tokenizer_loading import load_counting_tokenizer, load_tokenizer

PHI3_TOKENIZER = REPO.parent / "shared" / "phi3-tokenizer"
BAD_RECORDS = 25  # more than the text report lists


def _record(*turns: str, system: str | None = None) -> str:
    roles = ["user", "assistant"] * len(turns)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": role, "content": text} for role, text in zip(roles, turns)]
    return json.dumps({"messages": messages})


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory):
    """Bad records first, then one conversation per truncation outcome at the demo model's 512 tokens. The first
    runs past the demo tokenizer's model_max_length (4096), which makes transformers warn unless silenced."""
    words = " ".join(f"w{i}" for i in range(3000))  # far past 512 tokens
    lines = [json.dumps({"messages": [{"role": "assistant", "content": "no question"}]})] * BAD_RECORDS
    lines += [
        _record("What is the weather in Paris?", '{"name": "get_weather"}', system="Tools: " + words * 2),  # no_answer
        _record("Short question.", "Short answer.", "A second question, answered past the cut: " + words, "Lost."),
        _record("Tell me everything.", "Everything: " + words),  # last_answer_cut
        _record("Hi", "Hello"),  # short: not cut
    ]
    path = tmp_path_factory.mktemp("validate") / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _validate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "phi3lora", "validate", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # as conftest.run_cli: no GPU


def test_validate_json_without_torch_or_warnings_measures_like_training(mixed_file):
    done = _validate(mixed_file, "--json")
    assert done.returncode == 1  # bad records
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "tokenizers" in imported and not {"torch", "trl", "peft", "transformers"} & imported  # plain_tokenizer.py
    assert [line for line in done.stderr.splitlines() if not line.startswith("import time:")] == []  # no warning
    report = json.loads(done.stdout)
    assert len(report["errors"]) == BAD_RECORDS  # --json lists every problem
    tokens = report["tokens"]
    assert (report["base_model"], tokens["max_length"], tokens["keeps"]) == ("demo", 512, "start")  # the demo's default
    first = BAD_RECORDS + 1
    assert tokens["over_max_length"] == [first, first + 1, first + 2]
    assert [(cut["record"], cut["outcome"]) for cut in tokens["cut"]] == [
        (first, "no_answer"), (first + 1, "last_answer_lost"), (first + 2, "last_answer_cut")]
    assert tokens["cut"][0]["answer_starts_at"] >= 512 > tokens["cut"][1]["answer_starts_at"]
    assert tokens["cut_outcomes"] == {"no_answer": 1, "last_answer_lost": 1, "last_answer_cut": 1, "end_cut": 0}


def test_validate_text_lists_twenty_problems_and_says_what_is_cut(mixed_file):
    done = _validate(mixed_file, "--max-length", "600")
    assert done.returncode == 1
    out = done.stdout
    assert f"{BAD_RECORDS} problem(s):" in out and out.count("  record ") == 20
    assert f"... and {BAD_RECORDS - 20} more; --json lists them all" in out
    assert "max length 600 (as given)" in out
    first = BAD_RECORDS + 1
    assert f"1: no assistant token left within them: nothing to learn, trl drops the conversation: records {first}" in out
    assert f"1: the last answer starts past the cut and is lost entirely (earlier answers train): records {first + 1}" in out
    assert f"1: the last answer is cut short: records {first + 2}" in out


TEXTS = [
    "Plain English, with punctuation: commas, dots... and 'quotes'.",
    "Unicode: café, naïve, 日本語のテキスト, emoji 🤖🚀, Ελληνικά, עברית.",
    "Code:\n```python\ndef f(x):\n    return {'a': [1, 2, 3]}\n```\n\ttabs\tand   spaces  ",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    "   leading spaces, trailing newlines\n\n\n",
]


@pytest.mark.parametrize("folder, hub_style", [(DEMO_MODEL, False), (PHI3_TOKENIZER, False), (PHI3_TOKENIZER, True)],
                         ids=["demo", "phi3-mini", "phi3-mini-hub-style"])
def test_torch_free_tokenizers_count_as_autotokenizer(folder, hub_style, tmp_path):
    """The tokenizers validate loads without torch (transformers' own class) or without transformers (plain_tokenizer)
    render and count every token as AutoTokenizer's, also from a hub-style folder naming LlamaTokenizer with a
    Phi-3 config.json (as microsoft/Phi-3-mini-4k-instruct does)."""
    if not folder.is_dir():
        pytest.skip(f"the real Phi-3 tokenizer is expected at {folder} (../shared/phi3-tokenizer)")
    from transformers import AutoTokenizer

    conversations = [data.Conversation(i, [{"role": "system", "content": TEXTS[i - 1]},
                                           {"role": "user", "content": TEXTS[i % len(TEXTS)]},
                                           {"role": "assistant", "content": TEXTS[(i + 1) % len(TEXTS)] * 9}])
                     for i in range(1, len(TEXTS) + 1)]
    if hub_style:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (tmp_path / name).write_bytes((folder / name).read_bytes())
        settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": "LlamaTokenizer"}))
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3"}))
        folder = tmp_path
    auto = AutoTokenizer.from_pretrained(str(folder))
    light, plain = load_tokenizer(str(folder)), load_counting_tokenizer(str(folder))
    assert type(light) is type(auto) and isinstance(plain, PlainTokenizer)
    expected = data.token_lengths(auto, conversations)
    assert max(expected) > 128  # some are cut below
    for tokenizer in (light, plain):
        assert [data.render_text(tokenizer, c.messages) for c in conversations] == [
            data.render_text(auto, c.messages) for c in conversations]
        assert data.token_lengths(tokenizer, conversations) == expected
        assert tokenizer(TEXTS)["input_ids"] == auto(TEXTS, add_special_tokens=False)["input_ids"]
        assert measure(tokenizer, conversations, 128) == measure(auto, conversations, 128)


def test_plain_tokenizer_declines_what_it_cannot_render_exactly(tmp_path):
    """A template using tojson (transformers' own differs from jinja's), or a special token tokenizer.json lacks:
    the plain tokenizer steps aside, and validate counts through transformers."""
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((DEMO_MODEL / name).read_bytes())
    assert isinstance(load_counting_tokenizer(str(tmp_path)), PlainTokenizer)
    (tmp_path / "chat_template.jinja").write_text("{{ messages | tojson }}")
    assert not isinstance(load_counting_tokenizer(str(tmp_path)), PlainTokenizer)
    (tmp_path / "chat_template.jinja").write_bytes((DEMO_MODEL / "chat_template.jinja").read_bytes())
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**settings, "extra_special_tokens": ["<|new|>"]}))
    assert not isinstance(load_counting_tokenizer(str(tmp_path)), PlainTokenizer)
