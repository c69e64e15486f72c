"""Datasets written by other projects (../shared/datasets/third_party, listed in its README.md): read_dataset
gives each the answer a user would call right: usable in the format named, refused with the line that says why,
or the faulty records flagged. One test per file, in-process; one real `validate --columns` process."""
import json
from pathlib import Path

import pytest

from conftest import DATASETS, DEMO_MODEL, run_cli
from phi3lora import data

THIRD_PARTY = DATASETS / "third_party"


@pytest.fixture(scope="module")
def third_party() -> Path:
    if not THIRD_PARTY.is_dir():
        pytest.skip(f"the third-party datasets are not at {THIRD_PARTY} (they live in ../shared)")
    return THIRD_PARTY


def texts(ds: data.LoadedDataset, role: str) -> list[str]:
    return [m["content"] for c in ds.conversations for m in c.messages if m["role"] == role]


def usable(ds, fmt: str, records: int, conversations: int | None = None) -> None:
    assert (ds.format, ds.records, len(ds.conversations)) == (fmt, records, conversations or records), ds.problems[:3]
    assert ds.ok and ds.problems == []


def refused(ds, records: int, *fragments: str) -> None:
    """Refused whole in ONE line (not a problem per record) that holds every fragment."""
    assert ds.format is None and ds.records == records and ds.conversations == [] and not ds.ok
    assert len(ds.problems) == 1 and ds.problems[0].record is None, ds.problems[:3]
    assert all(fragment in ds.problems[0].message for fragment in fragments), ds.problems[0].message


def check_axolotl(ds):
    usable(ds, "sharegpt", 1)
    assert len(ds.conversations[0].messages) == 12


def check_alpaca_zh(ds):
    usable(ds, "alpaca", 1000)


def check_c4(ds):
    refused(ds, 300, "pre-training text, not conversations")


def check_dpo(ds):
    refused(ds, 300, "preference data", "'chosen'", "'rejected'")


def check_glaive_zh(ds):
    usable(ds, "sharegpt", 300)
    assert any(text.startswith(data.TOOLS_HEADER) for text in texts(ds, "system"))  # tools kept
    assert any(text.startswith(data.FUNCTION_CALL) for text in texts(ds, "assistant"))  # calls kept
    assert any(text.startswith(data.FUNCTION_RESULT) for text in texts(ds, "user"))  # observations kept


def check_kto(ds):
    usable(ds, "messages", 300, 150)
    assert any("150 of 300 records are labelled false in the 'label' column" in w for w in ds.warnings), ds.warnings
    assert not any("ignored columns" in w and "'label'" in w for w in ds.warnings)


def check_mllm(ds):
    refused(ds, 6, "the records hold images", "Phi-3-mini reads text only")


def check_reason_tool_use(ds):
    refused(ds, 50, "lists of typed parts", "'reasoning'", "write each turn's content as one string")


def check_mistral(ds):
    assert (ds.format, ds.records, [c.record for c in ds.conversations]) == ("messages", 2, [1])
    assert [(p.record, p.message) for p in ds.problems] == [
        (2, "turn 1: the conversation must end with an assistant turn, found user")]


def check_wikisql(ds):
    refused(ds, 1000, "pre-training text, not conversations")


def check_wwdc25(ds):
    usable(ds, "prompt_completion", 1800)


def check_ollaforge(ds):
    usable(ds, "alpaca", 3)


def check_drone(ds):
    usable(ds, "messages", 6)
    assert all(c.messages[-1]["content"].startswith(data.FUNCTION_CALL) for c in ds.conversations)  # the calls
    assert all(c.messages[0]["content"].startswith(data.TOOLS_HEADER) for c in ds.conversations)  # 16 functions
    assert '"name": "land_drone"' in ds.conversations[2].messages[-1]["content"]  # double-encoded arguments kept


def check_toy_chat(ds):
    assert (ds.format, ds.records, [c.record for c in ds.conversations]) == ("messages", 5, [1, 2, 3, 5])
    assert [p.record for p in ds.problems] == [4] and "must start with a user turn" in ds.problems[0].message
    from transformers import AutoTokenizer

    stats = data.token_stats(AutoTokenizer.from_pretrained(DEMO_MODEL), ds.conversations, 2048)
    assert stats.over_max_length == [5]  # "Eat a banana!" x2000


def check_phi3_mlx(ds):
    usable(ds, "phi3_text", 51)
    first = ds.conversations[0].messages
    assert first == [{"role": "user", "content": "Why shouldn't you use your cell phone at a gas station?"},
                     {"role": "assistant", "content": "You shouldn't use your cell phone at a gas station because it "
                                                      "will distract you"}]


def check_phi3_olive(ds):
    usable(ds, "prompt_completion", 57)
    assert texts(ds, "user")[0] == "What's a must-see in Paris?"
    assert any("'response' as completion" in w for w in ds.warnings), ds.warnings  # said, not asked


def check_profsynapse(ds):
    # role/content turns under `conversations`, read as messages. The README says the labels are all true; 75 of
    # the 150 are false (tool calls without the text the pattern teaches), so the KTO rule leaves those out
    usable(ds, "messages", 150, 75)
    assert any("75 of 150 records are labelled false" in w for w in ds.warnings), ds.warnings
    assert all(c.messages[-1]["content"].count(data.FUNCTION_CALL) == 1 for c in ds.conversations)


def check_smollm2(ds):
    usable(ds, "prompt_completion", 48)
    assert all(c.messages[0]["role"] == "system" for c in ds.conversations)  # system_prompt read as system
    assert any("'system_prompt' as system" in w for w in ds.warnings), ds.warnings


def check_coqa(ds):
    usable(ds, "messages", 10)
    assert all(c.messages[0]["role"] == "system" and len(c.messages) >= 11 for c in ds.conversations)


def check_torchtune(ds):
    usable(ds, "sharegpt", 1)
    assert [m["role"] for m in ds.conversations[0].messages] == ["system", "user", "assistant", "user", "assistant"]


EXPECTED = {
    "axolotl_conversation.json": check_axolotl,
    "llamafactory_alpaca_zh_demo.json": check_alpaca_zh,
    "llamafactory_c4_demo.jsonl": check_c4,
    "llamafactory_dpo_en_demo.json": check_dpo,
    "llamafactory_glaive_toolcall_zh_demo.json": check_glaive_zh,
    "llamafactory_kto_en_demo.json": check_kto,
    "llamafactory_mllm_demo.json": check_mllm,
    "llamafactory_reason_tool_use_demo_50.jsonl": check_reason_tool_use,
    "mistral_dataset_import_example.jsonl": check_mistral,
    "mlx_lora_wikisql_train.jsonl": check_wikisql,
    "mlx_wwdc25_train.jsonl": check_wwdc25,
    "ollaforge_sample_data.csv": check_ollaforge,
    "openai_drone_training_head.jsonl": check_drone,
    "openai_toy_chat_fine_tuning.jsonl": check_toy_chat,
    "phi3cookbook_mlx_valid.jsonl": check_phi3_mlx,
    "phi3cookbook_olive_travel_head.jsonl": check_phi3_olive,
    "profsynapse_tool_text_pairs_v1.1.jsonl": check_profsynapse,
    "smollm2_customs_train0.parquet": check_smollm2,
    "together_small_coqa_10.jsonl": check_coqa,
    "torchtune_chat_tiny.json": check_torchtune,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_third_party_file_gets_the_answer_a_user_would_call_right(third_party, name):
    EXPECTED[name](data.read_dataset(third_party / name))


def test_every_file_the_readme_lists_is_checked(third_party):
    readme = (third_party / "README.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1].strip() for line in readme.splitlines() if line.startswith("| ") and " @ " in line]
    listed = set(rows[1:])  # under the header row
    assert listed == set(EXPECTED) == {p.name for p in third_party.iterdir() if p.name != "README.md"}


def test_validate_maps_columns_given_on_the_command_line(third_party, tmp_path):
    """The one real process: --columns reads a preference file's chosen answers as completions (TRL's shape,
    written here from the DPO file's first records), and the report says what it left out."""
    pairs = json.loads((third_party / "llamafactory_dpo_en_demo.json").read_text(encoding="utf-8"))[:5]
    rows = [{"question": p["conversations"][-1]["value"], "chosen": p["chosen"]["value"],
             "rejected": p["rejected"]["value"]} for p in pairs if len(p["conversations"]) == 1]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    done = run_cli("validate", path, "--json", "--model", "demo", "--columns", "prompt=question, completion=chosen")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert (report["format"], report["conversations"], report["errors"]) == ("prompt_completion", len(rows), [])
    assert report["warnings"] == ["ignored columns (not part of the prompt_completion format): 'rejected'"]
