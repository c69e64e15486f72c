"""The data layer's rules for what other projects write, on tiny files of our own: Phi-3 chat markup in a `text`
column, column mapping (by name without asking, or given: --columns, data.columns) and its hostile inputs, turn
lists read by their shape, and files that are not chat SFT data (preference pairs, images, typed content parts,
pre-training text) refused in one line, with KTO's `label` column honoured."""
import json

import pytest

from phi3lora import data
from phi3lora.data import ColumnsError, parse_columns


def read(tmp_path, records: list, name: str = "data.jsonl", **kwargs) -> data.LoadedDataset:
    path = tmp_path / name
    if name.endswith(".csv"):
        columns = list(dict.fromkeys(key for record in records for key in record))
        lines = [",".join(columns)] + [",".join(str(record.get(c, "")) for c in columns) for record in records]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return data.read_dataset(path, **kwargs)


def one_line_refusal(ds) -> str:
    assert ds.format is None and ds.conversations == [] and len(ds.problems) == 1, ds.problems
    assert ds.problems[0].record is None
    return ds.problems[0].message


def turns(*pairs) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


QA = [{"question": "What colour is the sky?", "answer": "Blue, on a clear day."},
      {"question": "How many legs has a spider?", "answer": "Eight."}]

# --------------------------------------------------------------------------------------------- Phi-3 chat markup


def test_phi3_markup_is_read_back_into_turns(tmp_path):
    records = [
        {"text": "<|system|>\nBe brief.<|end|>\n<|user|>\nName a fruit.<|end|>\n<|assistant|>\nA pear.<|end|>\n"},
        {"text": "<s><|user|> \nAnd a vegetable? <|end|>\n<|assistant|> \nA leek. <|end|><|endoftext|>"},
        {"text": "<|user|>\nOne more.\n<|assistant|>\nA plum."},  # no <|end|>: the next tag and the end close turns
    ]
    ds = read(tmp_path, records)
    assert (ds.format, ds.ok) == ("phi3_text", True)
    assert [c.messages for c in ds.conversations] == [
        turns(("system", "Be brief."), ("user", "Name a fruit."), ("assistant", "A pear.")),
        turns(("user", "And a vegetable?"), ("assistant", "A leek.")),
        turns(("user", "One more."), ("assistant", "A plum.")),
    ]


@pytest.mark.parametrize("text, problem", [
    ("Intro <|user|>\nhi<|end|>\n<|assistant|>\nyo<|end|>", "text before the first role tag: 'Intro'"),
    ("<|user|>\nhi<|end|> stray <|assistant|>\nyo<|end|>", "text outside the turns after turn 1: 'stray'"),
    ("<|user|>\nhi<|end|><|end|><|assistant|>\nyo<|end|>", "an <|end|> after turn 1 closes no turn"),
    ("<|user|>\nhi<|end|>\n<|assistant|>\n <|end|>", "turn 2: assistant content is empty"),
    ("<|assistant|>\nyo<|end|>", "turn 1: the conversation must start with a user turn, found assistant"),
])
def test_broken_phi3_markup_names_the_turn(tmp_path, text, problem):
    good = {"text": "<|user|>\nhi<|end|>\n<|assistant|>\nyo<|end|>"}
    ds = read(tmp_path, [good, {"text": text}])
    assert ds.format == "phi3_text" and len(ds.conversations) == 1
    assert [(p.record, p.message.startswith(problem)) for p in ds.problems] == [(2, True)], ds.problems


def test_plain_text_is_refused_as_pretraining_text_in_one_line(tmp_path):
    ds = read(tmp_path, [{"text": f"Paragraph {i} of an article about rivers."} for i in range(40)])
    assert "pre-training text, not conversations" in one_line_refusal(ds)
    assert ds.records == 40
    chat = {"text": "<|user|>\nhi<|end|>\n<|assistant|>\nyo<|end|>"}
    mixed = read(tmp_path, [chat, {"text": "Just prose."}, chat])  # among chat records: that record's problem
    assert mixed.format == "phi3_text" and len(mixed.conversations) == 2
    assert [(p.record, p.message) for p in mixed.problems] == [
        (2, "the 'text' column holds plain text (pre-training text), not a conversation")]


def test_another_models_markup_is_named(tmp_path):
    chatml = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>"
    message = one_line_refusal(read(tmp_path, [{"text": chatml}]))
    assert "ChatML (<|im_start|>)" in message and "not Phi-3's" in message

# ---------------------------------------------------------------------------------------------- column mapping


@pytest.mark.parametrize("columns, fmt, mapped", [
    (("question", "answer"), "prompt_completion", "'answer' as completion"),
    (("query", "response"), "prompt_completion", "'query' as prompt"),
    (("input", "output"), "prompt_completion", "'output' as completion"),
    (("Question", "Answer"), "prompt_completion", "'Question' as prompt"),  # names compared without case
    (("instruction", "response"), "alpaca", "'response' as output"),  # alpaca with its answer named otherwise
])
def test_common_names_map_without_asking_and_say_so(tmp_path, columns, fmt, mapped):
    ds = read(tmp_path, [{columns[0]: "Name a colour.", columns[1]: "Green."}])
    assert (ds.format, ds.ok) == (fmt, True)
    assert ds.conversations[0].messages == turns(("user", "Name a colour."), ("assistant", "Green."))
    assert any(mapped in w and "--columns" in w for w in ds.warnings), ds.warnings


def test_a_system_prompt_column_becomes_the_system_turn(tmp_path):
    ds = read(tmp_path, [{"prompt": "Hi.", "response": "Hello.", "system_prompt": "Be warm."}], name="d.csv")
    assert ds.format == "prompt_completion"
    assert ds.conversations[0].messages == turns(("system", "Be warm."), ("user", "Hi."), ("assistant", "Hello."))


def test_ambiguous_or_unknown_names_are_refused_with_the_mapping_to_pass(tmp_path):
    two_prompts = one_line_refusal(read(tmp_path, [{"question": "q", "query": "q2", "answer": "a"}]))
    assert two_prompts.endswith("map them with --columns prompt=question,completion=answer")
    unknown = one_line_refusal(read(tmp_path, [{"frage": "Wie?", "antwort": "So."}]))
    assert "found columns 'frage', 'antwort'" in unknown and "--columns prompt=frage,completion=antwort" in unknown


def test_columns_given_explicitly(tmp_path):
    rows = [{"frage": "Wie heißt du?", "antwort": "Phi.", "prompt": "unused"}]
    ds = read(tmp_path, rows, columns="prompt=frage, completion=antwort")
    assert ds.ok and ds.conversations[0].messages == turns(("user", "Wie heißt du?"), ("assistant", "Phi."))
    assert ds.warnings == ["the file's own 'prompt' column is left out: the column mapping reads 'frage' as prompt"]
    swapped = read(tmp_path, QA, columns={"prompt": "answer", "completion": "question"})  # a mapping (data.columns)
    assert swapped.conversations[0].messages[0] == {"role": "user", "content": "Blue, on a clear day."}
    unicode = read(tmp_path, [{"问题": "天空是什么颜色？", "答案": "蓝色。"}], columns="prompt=问题,completion=答案")
    assert unicode.ok and unicode.format == "prompt_completion"


def test_mapping_a_column_the_file_lacks_is_one_problem_naming_its_columns(tmp_path):
    ds = read(tmp_path, QA, columns="prompt=questoin,completion=answer")
    assert one_line_refusal(ds) == ("column mapping prompt='questoin': the file has no column 'questoin'; its columns "
                                    "are 'question', 'answer'")
    long_name = one_line_refusal(read(tmp_path, QA, columns="prompt=" + "x" * 9_000))  # names are cut short
    assert long_name.startswith("column mapping prompt='xxx") and len(long_name) < 400


def test_the_mapping_travels_in_the_job_config(tmp_path):
    """--columns on train and runs start becomes data.columns, which config.yaml keeps for a resumed run."""
    from phi3lora.cli.commands import _job_config, _parser
    from phi3lora.errors import UserError
    from phi3lora.job_builder import assignments_layer, build_job, load_job, write_job_file

    mapping = {"prompt": "question", "completion": "answer"}
    for command in (["runs", "start"], ["train", "--output", str(tmp_path / "out")]):
        args = _parser().parse_args([*command, "--data", "qa.jsonl", "--columns", "prompt=question,completion=answer"])
        assert _job_config(args).data.columns == mapping
    written = write_job_file(_job_config(args), tmp_path)
    assert "  columns:\n    prompt: question\n    completion: answer\n" in written.read_text()
    assert load_job(written).data.columns == mapping
    args = _parser().parse_args(["runs", "start", "--data", "qa.jsonl", "--columns", "prompt=question,nope=answer"])
    with pytest.raises(UserError, match="^data.columns: unknown target 'nope'"):
        _job_config(args)
    assert build_job(assignments_layer(["data.columns=prompt=q"])).data.columns == {"prompt": "q"}  # --set too


@pytest.mark.parametrize("text, fragment", [
    ("promt=question", "unknown target 'promt'; columns map to prompt, completion, system"),
    ("prompt=question,prompt=query", "the target 'prompt' is mapped twice ('question' and 'query'); map each target once"),
    ("prompt=question,completion=question", "the column 'question' is mapped twice ('prompt' and 'completion'); map each column once"),
    ("prompt", "'prompt' is not TARGET=COLUMN; write it as prompt=question,completion=answer"),
    ("=question", "'=question' is not TARGET=COLUMN"),
    ("prompt=", "'prompt=' is not TARGET=COLUMN"),
    ("prompt=a=b", "'prompt=a=b' is not TARGET=COLUMN"),
    ("=" * 100_000, "over the 10,000 a mapping may take"),
    ("==,==", "'==' is not TARGET=COLUMN"),
    ("prompt=q," * 2_000, "over the 10,000"),
    ("prompt=\u202eevil\n,completion=a\x00b", None),  # control characters in names: taken as names
    ("\u043f\u0440\u043e\u043c\u043f\u0442=q", "unknown target '\u043f\u0440\u043e\u043c\u043f\u0442'"),
])
def test_hostile_column_mappings_get_a_plain_user_error(text, fragment):
    if fragment is None:
        assert parse_columns(text) == {"prompt": "\u202eevil", "completion": "a\x00b"}
        return
    with pytest.raises(ColumnsError) as raised:
        parse_columns(text)
    message = str(raised.value)
    assert isinstance(raised.value, data.DatasetError) and message.startswith("column mapping")
    assert fragment in message and len(message) < 600 and "\n" not in message, message


def test_empty_and_odd_mapping_values():
    assert parse_columns("") == parse_columns("  , ,") == parse_columns(None) == {}
    assert parse_columns(" prompt = my question ,completion=my answer,") == {"prompt": "my question",
                                                                              "completion": "my answer"}
    for bad in (5, ["prompt=q"], {"prompt": 5}, {"prompt": " "}, {"nope": "q"}):
        with pytest.raises(ColumnsError):
            data.check_columns(bad)

# -------------------------------------------------------------------------------------- turns read by their shape


def test_turn_lists_are_read_by_their_shape_not_their_key(tmp_path):
    role_turns = {"conversations": turns(("system", "Be kind."), ("user", "Hi."), ("assistant", "Hello."))}
    from_turns = {"messages": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}]}
    as_messages, as_sharegpt = read(tmp_path, [role_turns], "a.jsonl"), read(tmp_path, [from_turns], "b.jsonl")
    assert (as_messages.format, as_messages.ok, as_messages.warnings) == ("messages", True, [])
    assert (as_sharegpt.format, as_sharegpt.ok, as_sharegpt.warnings) == ("sharegpt", True, [])
    assert as_sharegpt.conversations[0].messages == turns(("user", "Hi."), ("assistant", "Hello."))
    forced = data.read_dataset(tmp_path / "a.jsonl", "sharegpt")  # forced: the turns are still what they are
    assert forced.ok and forced.conversations[0].messages == role_turns["conversations"]

# ------------------------------------------------------------------------------------ data that is not chat SFT


def test_preference_pairs_are_refused_in_one_line_and_detected(tmp_path):
    plain = [{"prompt": f"Pick {i}.", "chosen": "A fine answer.", "rejected": "A poor one."} for i in range(30)]
    message = one_line_refusal(read(tmp_path, plain))
    assert "preference data" in message and "--columns completion=chosen" in message and "--method dpo" in message
    conversational = [{"prompt": turns(("user", "Hi.")), "chosen": turns(("assistant", "Hello!")),
                       "rejected": turns(("assistant", "Go away."))}]
    assert "preference data" in one_line_refusal(read(tmp_path, conversational, "c.jsonl"))
    implicit = [{"chosen": turns(("user", "Hi."), ("assistant", "Hello!")),
                 "rejected": turns(("user", "Hi."), ("assistant", "No."))}]
    implicit_message = one_line_refusal(read(tmp_path, implicit, "i.jsonl"))
    assert "preference data" in implicit_message and "--columns" not in implicit_message  # no prompt: no advice
    assert data.dataset_kind(plain) == data.PREFERENCE and data.is_preference(plain[0])  # for a preference trainer
    assert data.dataset_kind([{"messages": turns(("user", "a"), ("assistant", "b"))}]) is None
    chosen_only = read(tmp_path, plain, "p.jsonl", columns="completion=chosen")  # the advice works
    assert chosen_only.ok and len(chosen_only.conversations) == 30


def test_a_preference_record_among_chat_records_is_one_problem(tmp_path):
    chat = {"messages": turns(("user", "a"), ("assistant", "b"))}
    ds = read(tmp_path, [chat, chat, {**chat, "chosen": "x", "rejected": "y"}])
    assert [c.record for c in ds.conversations] == [1, 2]
    assert [(p.record, p.message) for p in ds.problems] == [
        (3, "the record is preference data (chosen/rejected), not a conversation for supervised fine-tuning")]


def test_kto_records_labelled_false_are_left_out_with_a_count(tmp_path):
    rows = [{"messages": turns(("user", f"Q{i}"), ("assistant", f"A{i}")), "label": i % 3 != 0} for i in range(9)]
    ds = read(tmp_path, rows)
    assert ds.ok and ds.records == 9 and [c.record for c in ds.conversations] == [2, 3, 5, 6, 8, 9]
    assert ds.warnings == ["3 of 9 records are labelled false in the 'label' column (KTO data: answers marked "
                           "undesirable) and are left out: supervised fine-tuning would learn to write them"]
    as_csv = read(tmp_path, [{"prompt": "Q", "completion": "A", "label": label} for label in ("true", "FALSE")],
                  "k.csv")
    assert len(as_csv.conversations) == 1 and "1 of 2 records" in as_csv.warnings[0]
    classes = read(tmp_path, [{"prompt": "Q", "completion": "A", "label": "positive"}], "l.jsonl")
    assert classes.ok and classes.warnings == ["ignored columns (not part of the prompt_completion format): 'label'"]


@pytest.mark.parametrize("record, fragment", [
    ({"messages": turns(("user", "<image>What is this?"), ("assistant", "A cat.")), "images": ["cat.png"]},
     "the records hold images (the 'images' column, <image> placeholders), and Phi-3-mini reads text only"),
    ({"messages": turns(("user", "Describe <image>"), ("assistant", "A dog."))}, "the records hold images (<image>"),
    ({"prompt": "Transcribe.", "completion": "Hello.", "audios": ["a.wav"]}, "the records hold audio"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"},
                                                {"type": "image_url", "image_url": {"url": "x"}}]},
                   {"role": "assistant", "content": "A tree."}]}, "the records hold images ('image_url' content parts"),
])
def test_multimodal_records_are_refused_in_one_line(tmp_path, record, fragment):
    assert fragment in one_line_refusal(read(tmp_path, [record] * 3))


def test_typed_content_parts_are_refused_in_one_line(tmp_path):
    record = {"messages": [{"role": "user", "content": [{"type": "text", "value": "Hi."}]},
                           {"role": "assistant", "content": [{"type": "reasoning", "value": "Greet back."},
                                                             {"type": "text", "value": "Hello."}]}]}
    message = one_line_refusal(read(tmp_path, [record] * 4))
    assert "lists of typed parts (types 'text', 'reasoning'" in message and "one string" in message
