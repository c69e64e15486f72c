"""phi3lora.data: every file type and format, the problems a user meets (with record numbers), rendering,
token statistics, the train/eval split and the hand-off to datasets. No model is trained here."""
import codecs
import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DATASETS, DEMO_MODEL, needs_shared_datasets
from phi3lora import data
from phi3lora.data import Conversation, DatasetError
from phi3lora.data.samples import SAMPLES_DIR

FIXTURES = Path(__file__).resolve().parent  # good/ and bad/ beside this file
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def write(path: Path, records: list) -> Path:
    """Save records as the path's file type: JSON Lines, a JSON object holding the list, CSV with list cells as
    JSON text, or Parquet."""
    columns = list(dict.fromkeys(key for r in records for key in r))
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps({"data": records}, ensure_ascii=False), encoding="utf-8")
    elif path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for r in records:
            cells = [r.get(c) for c in columns]
            writer.writerow(["" if v is None else json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict))
                             else v for v in cells])
        path.write_text(buffer.getvalue(), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in records]), path)  # every column
    return path


def jsonl(*records) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def load(tmp_path: Path, name: str, records: list, format: str = "auto") -> data.LoadedDataset:
    return data.read_dataset(write(tmp_path / name, records), format)


def chat(*pairs) -> list[dict]:
    """[("user", "hi"), ("assistant", "yo")] -> messages."""
    return [{"role": role, "content": content} for role, content in pairs]


GOOD = {"instruction": "Say hi", "output": "hi"}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_MODEL)


# ---------------------------------------------------------------------------------------------- real datasets


@needs_shared_datasets
@pytest.mark.parametrize(
    "name, fmt, count",
    [("identity.json", "alpaca", 91), ("alpaca_en_demo.json", "alpaca", 999),
     ("glaive_toolcall_en_demo.json", "sharegpt", 300)],
)
def test_real_datasets_load_cleanly(name, fmt, count):
    ds = data.read_dataset(DATASETS / name)
    assert (ds.format, ds.records, len(ds.conversations)) == (fmt, count, count)
    assert ds.problems == [] and ds.warnings == [] and ds.ok
    assert [c.record for c in ds.conversations] == list(range(1, count + 1))


@needs_shared_datasets
def test_identity_alpaca_becomes_one_user_and_one_assistant_turn():
    first = data.read_dataset(DATASETS / "identity.json").conversations[0]
    assert first.messages == chat(("user", "hi"), ("assistant", "Hello! I am {{name}}, an AI assistant developed by "
                                                               "{{author}}. How can I assist you today?"))


@needs_shared_datasets
def test_alpaca_input_follows_the_instruction():
    raw = json.loads((DATASETS / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    index = next(i for i, r in enumerate(raw) if r["input"])
    conversation = data.read_dataset(DATASETS / "alpaca_en_demo.json").conversations[index]
    assert conversation.messages[0]["content"] == raw[index]["instruction"] + "\n\n" + raw[index]["input"]


@needs_shared_datasets
def test_glaive_tools_open_the_system_message_and_calls_are_mapped():
    raw = json.loads((DATASETS / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    conversations = data.read_dataset(DATASETS / "glaive_toolcall_en_demo.json").conversations
    first = conversations[0].messages
    assert first[0]["role"] == "system"
    assert first[0]["content"] == data.TOOLS_HEADER + json.dumps(json.loads(raw[0]["tools"]))
    call = raw[0]["conversations"][3]
    assert call["from"] == "function_call" and raw[0]["conversations"][4]["from"] == "observation"
    assert first[4] == {"role": "assistant", "content": "Function call:\n" + call["value"]}
    assert first[5] == {"role": "user", "content": "Function result:\n" + raw[0]["conversations"][4]["value"]}
    without_tools = [c for c, r in zip(conversations, raw) if r["tools"] == "[]"]
    assert without_tools and all(c.messages[0]["role"] == "user" for c in without_tools)
    for c in conversations:
        roles = [m["role"] for m in c.messages if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2)


# ---------------------------------------------------------------------------------------------- file types


def _sources() -> dict[str, list]:
    sharegpt = [{**json.loads(line), "tools": "[]"} for line in (SAMPLES_DIR / "multi_turn.jsonl").open()]
    sharegpt[2]["tools"] = json.dumps([{"name": "timer", "parameters": {"minutes": "int"}}])  # JSON text, as in CSV
    sharegpt[3] = {"tools": sharegpt[2]["tools"], "conversations": [
        {"from": "human", "value": "Ten minutes for the tea, please."},
        {"from": "function_call", "value": '{"name": "timer", "arguments": {"minutes": 10}}'},
        {"from": "observation", "value": '{"ok": true}'}, {"from": "gpt", "value": "Your tea timer is set."}]}
    alpaca = [{"instruction": "Name a primary colour.", "input": "", "output": "Red."},
              {"instruction": "Reverse the word.", "input": "stone", "output": "enots"},
              {"instruction": "Add the numbers.", "input": "4 and 5", "output": "9"},
              {"instruction": "Write a greeting for a birthday card.", "input": "", "output": "Happy birthday!"}]
    alpaca[1] = {**alpaca[1], "system": "Be brief.", "history": [["Hello", "Hi!"], ["How are you?", "Fine."]]}
    messages = [
        {"messages": chat(("system", "You are kind."), ("user", "Weather?"))
         + [{"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "content": '{"temp": 3}'}, {"role": "assistant", "content": "3 degrees."}]},
        {"messages": chat(("user", "Ça va ?"), ("assistant", "Oui. 👍"))},
    ]
    pairs = [{"prompt": "2+2?", "completion": "4"}, {"prompt": "Capital of France?", "completion": "Paris"}]
    return {"sharegpt": sharegpt, "alpaca": alpaca, "messages": messages, "prompt_completion": pairs}


@pytest.mark.parametrize("fmt", ["sharegpt", "alpaca", "messages", "prompt_completion"])
def test_every_file_type_loads_the_same_conversations(tmp_path, fmt):
    records = _sources()[fmt]
    loaded = {suffix: load(tmp_path, f"{fmt}{suffix}", records) for suffix in SUFFIXES}
    reference = loaded[".json"]
    assert reference.format == fmt and reference.ok, reference.problems
    expected = [(c.record, c.messages) for c in reference.conversations]
    assert len(expected) == len(records)
    for suffix, ds in loaded.items():
        assert (ds.format, ds.records, ds.problems) == (fmt, len(records), []), suffix
        assert [(c.record, c.messages) for c in ds.conversations] == expected, suffix


def test_bom_and_crlf_load_fine():
    for name in ("bom_crlf.jsonl", "bom_crlf.csv"):
        raw = (FIXTURES / "good" / name).read_bytes()
        assert raw.startswith(codecs.BOM_UTF8) and b"\r\n" in raw, f"fixture {name} lost its BOM or CRLF"
        ds = data.read_dataset(FIXTURES / "good" / name)
        assert ds.ok and ds.format == "alpaca" and ds.problems == []
        assert [c.messages for c in ds.conversations] == [
            chat(("user", "Say hello in French"), ("assistant", "Bonjour, ça va ?")),
            chat(("user", "Translate\n\nnaïve café"), ("assistant", "naive coffee shop")),
        ]


def test_jsonl_record_numbers_are_line_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_bytes(b"\n" + jsonl(GOOD) + b"   \n\n" + jsonl(GOOD))
    ds = data.read_dataset(path)
    assert ds.ok and [c.record for c in ds.conversations] == [2, 5]


# ---------------------------------------------------------------------------------------------- format mapping


def test_sharegpt_mapping(tmp_path):
    tools = [{"name": "add", "parameters": {"a": "int", "b": "int"}}]
    record = {
        "system": "Be exact.",
        "tools": tools,
        "conversations": [
            {"from": "human", "value": "1+2?"},
            {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 1, "b": 2}}'},
            {"from": "observation", "value": "3"},
            {"from": "gpt", "value": "3."},
            {"from": "user", "value": "Thanks"},
            {"from": "assistant", "value": "You're welcome."},
        ],
    }
    ds = load(tmp_path, "s.jsonl", [record])
    assert ds.ok and ds.format == "sharegpt"
    assert ds.conversations[0].messages == chat(
        ("system", "You can call these functions:\n" + json.dumps(tools) + "\n\nBe exact."),
        ("user", "1+2?"),
        ("assistant", 'Function call:\n{"name": "add", "arguments": {"a": 1, "b": 2}}'),
        ("user", "Function result:\n3"),
        ("assistant", "3."),
        ("user", "Thanks"),
        ("assistant", "You're welcome."),
    )


@pytest.mark.parametrize("tools", ["", "[]", [], None])
def test_sharegpt_empty_tools_add_nothing(tmp_path, tools):
    record = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}], "tools": tools}
    assert load(tmp_path, "s.jsonl", [record]).conversations[0].messages == chat(("user", "a"), ("assistant", "b"))


def test_sharegpt_system_turn_in_the_conversation(tmp_path):
    record = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "a"},
                                {"from": "gpt", "value": "b"}], "tools": '[{"name": "f"}]'}
    messages = load(tmp_path, "s.jsonl", [record]).conversations[0].messages
    assert messages[0] == {"role": "system", "content": 'You can call these functions:\n[{"name": "f"}]\n\nS'}


def test_messages_tool_role_and_tool_calls(tmp_path):
    messages = load(tmp_path, "m.jsonl", _sources()["messages"][:1]).conversations[0].messages
    assert messages == chat(
        ("system", "You are kind."),
        ("user", "Weather?"),
        ("assistant", 'Function call:\n{"name": "weather", "arguments": {"city": "Oslo"}}'),
        ("user", 'Function result:\n{"temp": 3}'),
        ("assistant", "3 degrees."),
    )


def test_messages_tool_calls_follow_the_text(tmp_path):
    calls = [{"function": {"name": "a", "arguments": {}}}, {"function": {"name": "b", "arguments": "{}"}}]
    record = {"messages": chat(("user", "go")) + [{"role": "assistant", "content": "On it.", "tool_calls": calls}]
              + chat(("tool", "done"), ("assistant", "Done."))}
    messages = load(tmp_path, "m.jsonl", [record]).conversations[0].messages
    assert messages[1]["content"] == ('On it.\n\nFunction call:\n'
                                      '[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]')


def test_alpaca_mapping(tmp_path):
    records = [
        {"system": "Be brief.", "history": [["Hi", "Hello!"]], "instruction": "Add", "input": "1 and 2", "output": "3"},
        {"instruction": "", "input": "What is 2+2?", "output": "4"},
        {"instruction": "Name a colour", "input": "  ", "output": "Blue", "history": None, "system": ""},
    ]
    ds = load(tmp_path, "a.json", records)
    assert ds.ok, ds.problems
    assert [c.messages for c in ds.conversations] == [
        chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Add\n\n1 and 2"),
             ("assistant", "3")),
        chat(("user", "What is 2+2?"), ("assistant", "4")),
        chat(("user", "Name a colour"), ("assistant", "Blue")),
    ]


def test_prompt_completion_strings_and_message_lists(tmp_path):
    records = [
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": chat(("system", "S"), ("user", "Hi")), "completion": chat(("assistant", "Hello"))},
    ]
    expected = [chat(("user", "2+2?"), ("assistant", "4")),
                chat(("system", "S"), ("user", "Hi"), ("assistant", "Hello"))]
    for suffix in (".jsonl", ".csv", ".parquet"):
        kept = slice(1, None) if suffix == ".parquet" else slice(None)  # a Parquet column holds one type
        ds = load(tmp_path, f"pc{suffix}", records[kept])
        assert ds.ok and ds.format == "prompt_completion", (suffix, ds.problems)
        assert [c.messages for c in ds.conversations] == expected[kept]


def test_detection_follows_the_majority_and_can_be_overridden(tmp_path):
    records = [{"prompt": "p", "completion": "c"}, GOOD, GOOD]
    ds = load(tmp_path, "mixed.jsonl", records)
    assert ds.format == "alpaca" and [c.record for c in ds.conversations] == [2, 3]
    assert ds.problems == [data.Problem(1, "missing 'instruction' and 'output' (the alpaca format needs 'instruction' "
                                           "and 'output')")]
    forced = load(tmp_path, "mixed.jsonl", records, format="prompt_completion")
    assert forced.format == "prompt_completion" and [c.record for c in forced.conversations] == [1]
    assert [p.record for p in forced.problems] == [2, 3]
    assert "missing 'prompt' and 'completion'" in forced.problems[0].message


def test_unknown_columns_beside_a_format_are_a_warning(tmp_path):
    ds = load(tmp_path, "extra.jsonl", [{**GOOD, "id": 1, "lang": "en"}])
    assert ds.ok and ds.warnings == ["ignored columns (not part of the alpaca format): 'id', 'lang'"]


def test_a_single_record_json_object(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"messages": chat(("user", "a"), ("assistant", "b"))}))
    ds = data.read_dataset(path)
    assert ds.ok and ds.records == 1 and ds.conversations[0].messages == chat(("user", "a"), ("assistant", "b"))


def test_bad_format_argument_raises():
    with pytest.raises(DatasetError, match="unknown dataset format 'chatml'"):
        data.read_dataset(SAMPLES_DIR / "identity.jsonl", "chatml")


# ---------------------------------------------------------------------------------------------- malformed files


def _messages(*pairs) -> dict:
    return {"messages": chat(*pairs)}


def _sharegpt(*turns) -> dict:
    return {"conversations": [{"from": source, "value": value} for source, value in turns]}


UA = (("user", "hi"), ("assistant", "hello"))
CONVERSATION_OK = _sharegpt(("human", "a"), ("gpt", "b"))

# name -> (file content, record number of the problem (None: the whole file), fragment of its message, good records)
MALFORMED = {
    "broken_line.jsonl": (jsonl(GOOD, '{"instruction": "c", "output": ', GOOD), 2,
                          "line 2 is not valid JSON: Expecting value (column 32)", 2),
    "missing_output.jsonl": (jsonl(GOOD, {"instruction": "x"}), 2,
                             "missing 'output' (the alpaca format needs 'instruction' and 'output')", 1),
    "null_output.json": (json.dumps([GOOD, GOOD, {"instruction": "x", "output": None}]).encode(), 3,
                         "missing 'output'", 2),
    "missing_role.jsonl": (jsonl(_messages(*UA), {"messages": [{"content": "x"}]}), 2, "turn 1: missing 'role'", 1),
    "missing_content.jsonl": (jsonl(_messages(*UA), {"messages": [{"role": "user"}, *chat(("assistant", "b"))]}), 2,
                              "turn 1: user content is missing", 1),
    "number_instruction.jsonl": (jsonl(GOOD, {"instruction": 5, "output": "x"}), 2,
                                 "instruction must be a string, found a number", 1),
    "list_content.jsonl": (jsonl(_messages(*UA), _messages(("user", "a"), ("assistant", ["b"]))), 2,
                           "turn 2: assistant content must be a string, found a list", 1),
    "messages_not_list.jsonl": (jsonl(_messages(*UA), {"messages": "hello"}), 2,
                                "messages must be a list of {role, content} objects, found text", 1),
    "turn_not_object.jsonl": (jsonl(_messages(*UA), {"messages": [["user", "hi"]]}), 2,
                              "turn 1 must be an object with 'role' and 'content', found a list", 1),
    "empty_turn.jsonl": (jsonl(_messages(*UA), _messages(("user", "a"), ("assistant", "  \n"))), 2,
                         "turn 2: assistant content is empty", 1),
    "empty_output.jsonl": (jsonl(GOOD, {"instruction": "x", "output": ""}), 2, "output is empty", 1),
    "empty_prompt.jsonl": (jsonl(GOOD, {"instruction": " ", "input": "", "output": "y"}), 2, "instruction is empty", 1),
    "empty_sharegpt_value.jsonl": (jsonl(CONVERSATION_OK, _sharegpt(("human", ""), ("gpt", "b"))), 2,
                                   "turn 1: human content is empty", 1),
    "starts_with_assistant.jsonl": (jsonl(_messages(*UA), _messages(("assistant", "a"), ("user", "b"))), 2,
                                    "turn 1: the conversation must start with a user turn, found assistant", 1),
    "two_users.jsonl": (jsonl(_messages(*UA), _messages(("user", "a"), ("user", "b"), ("assistant", "c"))), 2,
                        "turn 2: user follows user; user and assistant turns must alternate", 1),
    "ends_with_user.jsonl": (jsonl(_messages(*UA), _messages(("user", "a"), ("assistant", "b"), ("user", "c"))), 2,
                             "turn 3: the conversation must end with an assistant turn, found user", 1),
    "system_only.jsonl": (jsonl(_messages(*UA), _messages(("system", "s"))), 2,
                          "the conversation has no user or assistant turns", 1),
    "empty_messages.jsonl": (jsonl(_messages(*UA), {"messages": []}), 2, "the conversation is empty", 1),
    "system_not_first.jsonl": (jsonl(_messages(*UA), _messages(("user", "a"), ("system", "s"), ("assistant", "b"))), 2,
                               "turn 2: a system message may only come first", 1),
    "unknown_role.jsonl": (jsonl(_messages(*UA), _messages(("human", "a"), ("assistant", "b"))), 2,
                           "turn 1: unknown role 'human'; use 'system', 'user', 'assistant' or 'tool'", 1),
    "unknown_sharegpt_role.jsonl": (jsonl(CONVERSATION_OK, _sharegpt(("bot", "a"))), 2,
                                    "turn 1: unknown role 'bot'; use 'human', 'user', 'gpt', 'assistant', 'system', "
                                    "'function_call' or 'observation'", 1),
    "call_without_observation.jsonl": (
        jsonl(CONVERSATION_OK, _sharegpt(("human", "a"), ("function_call", "{}"), ("gpt", "b"))), 2,
        "turn 2: a function_call must be followed by an observation, found gpt", 1),
    "call_at_the_end.jsonl": (
        jsonl(CONVERSATION_OK, _sharegpt(("human", "a"), ("function_call", "{}"))), 2,
        "turn 2: a function_call must be followed by an observation, found nothing", 1),
    "observation_out_of_place.jsonl": (
        jsonl(CONVERSATION_OK, _sharegpt(("human", "a"), ("observation", "1"), ("gpt", "b"))), 2,
        "turn 2: observation (user) follows human (user)", 1),
    "bad_tools.jsonl": (jsonl(CONVERSATION_OK, {**CONVERSATION_OK, "tools": "[{"}), 2, "tools is not valid JSON", 1),
    "bad_history.jsonl": (jsonl(GOOD, {**GOOD, "history": [["only one"]]}), 2,
                          "history pair 1 must be a [user, assistant] pair, found a list", 1),
    "mixed_prompt.jsonl": (jsonl({"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": chat(("assistant", "b"))}),
                           2, "prompt and completion must both be strings or both be lists of messages, "
                              "found a string and a list", 1),
    "scalar_line.jsonl": (jsonl(GOOD, '"just text"', GOOD), 2,
                          "expected an object with named fields, found a string", 2),
    "nested_non_object.json": (json.dumps({"data": [GOOD, [1, 2], GOOD]}).encode(), 2,
                               "expected an object with named fields, found a list", 2),
    "broken_messages_cell.csv": (b'messages\n"[{""role"": ""user"", ""content"": ""a""}, {""role"": ""assistant"", '
                                 b'""content"": ""b""}]"\n"[{""role"": ""user""]"\n', 2,
                                 "messages must be a list of {role, content} objects, found text that is not a JSON "
                                 "list", 1),
    "short_row.csv": (b"instruction,output\nSay hi,hi\nonly one cell\n", 2,
                      "the row has 1 cell(s) but the header has 2 columns (CSV line 3)", 1),
    # whole-file problems
    "empty.jsonl": (b"", None, "the file is empty", 0),
    "blank.json": (b" \n\r\n", None, "the file is empty", 0),
    "empty.parquet": (b"", None, "the file is empty", 0),
    "utf16.jsonl": (json.dumps(GOOD).encode("utf-16"), None, "UTF-16", 0),
    "broken.json": (b'[\n  {"instruction": "a",\n   "output": }\n]', None,
                    "not valid JSON: Expecting value at line 3, column 14", 0),
    "lines.json": (jsonl(GOOD, GOOD), None, "name it .jsonl", 0),
    "scalar.json": (b"42", None, "expected a JSON array of records, found a number", 0),
    "two_lists.json": (json.dumps({"train": [GOOD], "test": [GOOD]}).encode(), None,
                       "an object holding one list of records; found an object with keys 'train', 'test'", 0),
    "no_records.json": (b"[]", None, "the file holds no records", 0),
    "header_only.csv": (b"instruction,output\n", None, "the file holds no records", 0),
    "columns.json": (json.dumps([{"frage": "q", "antwort": "a"}, {"frage": "q2", "quelle": "x"}]).encode(), None,
                     "no known format: found columns 'frage', 'antwort', 'quelle'; expected 'messages', "
                     "'conversations', 'instruction'+'output', or 'prompt'+'completion'", 0),
    "text.parquet": (jsonl(GOOD), None, "not a readable Parquet file", 0),
    "notes.txt": (jsonl(GOOD), None, "unsupported file type '.txt': use .jsonl, .json, .csv, .parquet", 0),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_files_name_the_record_and_the_reason(tmp_path, name):
    content, record, fragment, good = MALFORMED[name]
    path = tmp_path / name
    path.write_bytes(content)
    ds = data.read_dataset(path)
    assert not ds.ok
    assert any(p.record == record and fragment in p.message for p in ds.problems), ds.problems
    assert len(ds.conversations) == good


@pytest.mark.parametrize(
    "name, fragment",
    [("binary.json", "the file does not look like a text file"),
     ("latin1.jsonl", "not UTF-8 text: byte 0xe7 at byte offset 72 (line 1) is not UTF-8; save the file as UTF-8")],
)
def test_files_that_are_not_utf8_text(name, fragment):
    ds = data.read_dataset(FIXTURES / "bad" / name)
    assert (ds.format, ds.records, ds.conversations) == (None, 0, [])
    assert len(ds.problems) == 1 and ds.problems[0].record is None and fragment in ds.problems[0].message


def test_missing_file(tmp_path):
    ds = data.read_dataset(tmp_path / "nowhere.jsonl")
    assert [str(p) for p in ds.problems] == [f"file not found: {tmp_path / 'nowhere.jsonl'}"]


def test_problems_come_in_record_order_with_one_per_issue(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_bytes(jsonl({"instruction": "", "output": ""}, "{", GOOD))
    ds = data.read_dataset(path)
    assert [str(p) for p in ds.problems] == [
        "record 1: instruction is empty", "record 1: output is empty",
        "record 2: line 2 is not valid JSON: Expecting property name enclosed in double quotes (column 2)",
    ]
    assert ds.records == 3 and [c.record for c in ds.conversations] == [3]


# ---------------------------------------------------------------------------------------------- using the data


def _mixed(tmp_path, bad: int) -> data.LoadedDataset:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(jsonl(GOOD, *[{"instruction": "x"}] * bad, GOOD))
    return data.read_dataset(path)


def test_usable_conversations_refuses_problems_unless_told_to_drop(tmp_path):
    ds = _mixed(tmp_path, 25)
    with pytest.raises(DatasetError) as refused:
        data.usable_conversations(ds)
    message = str(refused.value)
    assert "mixed.jsonl has 25 problem(s):" in message and "record 2: missing 'output'" in message
    assert "record 21:" in message and "record 22:" not in message and "... and 5 more" in message
    assert "drop_invalid / --drop-invalid" in message and len(refused.value.problems) == 25
    kept = data.usable_conversations(ds, drop_invalid=True)
    assert [c.record for c in kept] == [1, 27]


def test_usable_conversations_refuses_a_dataset_with_none_left(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.csv has no usable conversations:\n  the file is empty"):
        data.usable_conversations(data.read_dataset(path), drop_invalid=True)
    assert len(data.usable_conversations(data.read_dataset(SAMPLES_DIR / "multi_turn.jsonl"))) == 24


def _conversations(n: int) -> list[Conversation]:
    return [Conversation(i, chat(("user", f"q{i}"), ("assistant", f"a{i}"))) for i in range(1, n + 1)]


@pytest.mark.parametrize(
    "n, eval_size, sizes",
    [(100, 0.1, (90, 10)), (100, 7, (93, 7)), (100, 7.0, (93, 7)), (100, 0, (100, 0)), (10, 0.01, (9, 1)),
     (2, 0.1, (1, 1)), (1, 0.5, (1, 0)), (1, 3, (1, 0)), (5, 10, (1, 4)), (0, 0.1, (0, 0))],
)
def test_split_sizes(n, eval_size, sizes):
    train, evaluation = data.split_train_eval(_conversations(n), eval_size, seed=1)
    assert (len(train), len(evaluation)) == sizes
    assert sorted(c.record for c in train + evaluation) == list(range(1, n + 1))


def test_split_is_deterministic_and_keeps_file_order():
    conversations = _conversations(50)
    first = data.split_train_eval(conversations, 0.2, seed=42)
    assert first == data.split_train_eval(conversations, 0.2, seed=42)
    assert first[1] != data.split_train_eval(conversations, 0.2, seed=43)[1]
    for part in first:
        assert [c.record for c in part] == sorted(c.record for c in part)


@pytest.mark.parametrize("eval_size", [-0.1, 1.5, "0.1", True, float("nan")])
def test_split_refuses_a_bad_eval_size(eval_size):
    with pytest.raises(DatasetError, match="eval_size"):
        data.split_train_eval(_conversations(10), eval_size, seed=0)


def test_render_text_uses_the_chat_template(tokenizer):
    text = data.render_text(tokenizer, chat(("system", "S"), ("user", "hi"), ("assistant", "hello")))
    assert text == "<|system|>\nS<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n<|endoftext|>"


def test_token_stats(tokenizer):
    conversations = [Conversation(i + 1, chat(("user", "word " * n), ("assistant", "ok"))) for i, n in
                     enumerate([1, 50, 5, 200, 20])]
    lengths = [len(tokenizer(data.render_text(tokenizer, c.messages), add_special_tokens=False)["input_ids"])
               for c in conversations]
    limit = sorted(lengths)[2]  # the median: two conversations are longer
    stats = data.token_stats(tokenizer, conversations, limit)
    assert (stats.count, stats.min, stats.max, stats.median) == (5, min(lengths), max(lengths), limit)
    assert stats.p95 == max(lengths)  # nearest rank: the 5th of 5
    assert stats.mean == pytest.approx(sum(lengths) / 5, abs=0.05)
    assert stats.max_length == limit and stats.over_max_length == [2, 4]
    assert data.token_stats(tokenizer, [], 10) == data.TokenStats(0, 0, 0, 0.0, 0.0, 0, 10, [])


def test_report_is_json_ready(tokenizer, tmp_path):
    good = data.report(data.read_dataset(SAMPLES_DIR / "identity.jsonl"), tokenizer, max_length=32)
    assert json.loads(json.dumps(good)) == good
    assert (good["format"], good["records"], good["conversations"], good["ok"]) == ("messages", 90, 90, True)
    assert good["errors"] == [] and good["warnings"] == []
    assert good["tokens"]["count"] == 90 and good["tokens"]["over_max_length"]
    bad = data.report(_mixed(tmp_path, 1))
    assert json.loads(json.dumps(bad)) == bad and bad["tokens"] is None and bad["ok"] is False
    assert bad["errors"] == [{"record": 2,
                              "message": "missing 'output' (the alpaca format needs 'instruction' and 'output')"}]


def test_to_hf_dataset_has_one_messages_column():
    conversations = _conversations(3)
    hf = data.to_hf_dataset(conversations)
    assert hf.column_names == ["messages"] and hf.num_rows == 3
    assert hf[1]["messages"] == conversations[1].messages
    empty = data.to_hf_dataset([])
    assert empty.column_names == ["messages"] and empty.num_rows == 0
