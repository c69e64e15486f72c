"""What a new user meets, handler by handler (in process, no server): the Data tab's list is the package's samples,
whatever they are; the identity sample is filled in with the typed name and maker in the visitor's own folder,
and again as the run starts; the API names samples as before; Compare picks the newest run until the visitor
picks, and says what it compares. The browser test (test_browser_app.py) does all of it in one real first run."""
import json
from pathlib import Path

import gradio as gr
import pytest

from phi3lora.data import samples
from phi3lora.runs import lifecycle
from phi3lora.ui import common, compare_tab, data_tab, sample_pick, train_tab
from phi3lora.ui.state import TokenizerCache


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_list_is_whatever_samples_ships_with_its_descriptions(tmp_path, monkeypatch, home):
    monkeypatch.setattr(samples, "SAMPLES_DIR", tmp_path)
    chat = samples.Sample("chat.jsonl", "three-turn chats about the weather")
    tools = samples.Sample("tools.jsonl", "calls to a calculator tool")
    missing = samples.Sample("missing.jsonl", "not in this install")
    monkeypatch.setattr(samples, "SAMPLES", (chat, tools, missing))
    for sample in (chat, tools):
        sample.path.write_text('{"messages": []}\n')
    assert common.bundled_datasets() == {"chat.jsonl": tmp_path / "chat.jsonl", "tools.jsonl": tmp_path / "tools.jsonl"}
    assert common.is_bundled(tmp_path / "tools.jsonl") and not common.is_bundled(tmp_path / "missing.jsonl")
    with gr.Blocks():
        tab = data_tab.build()
    assert [value for _, value in tab.samples.choice.choices] == ["chat.jsonl", "tools.jsonl"]
    assert tab.samples.about.value.splitlines() == ["- `chat.jsonl`: three-turn chats about the weather",
                                                    "- `tools.jsonl`: calls to a calculator tool"]
    dataset, folder, fields = sample_pick.use_sample("tools.jsonl", "", "", None, None)
    assert dataset == {"path": str(tmp_path / "tools.jsonl"), "name": "tools.jsonl", "source": "ships with the app"}
    assert folder is None and fields.visible is False  # nothing to fill in, nothing written


def test_the_identity_is_filled_in_the_visitors_folder_and_again_at_start(home):
    dataset, folder, fields = sample_pick.use_sample("identity.jsonl", "", "", None, None)
    assert fields.visible is True and Path(folder).parent == common.uploads_root()
    first = Path(dataset["path"])
    assert first == Path(folder) / "filled" / "identity-quill.jsonl"  # the placeholders' defaults
    assert "I am Quill" in first.read_text() and dataset["name"] == "identity-quill.jsonl"

    form = train_tab.TrainForm(dataset, "auto", False, 0.1, "lora", (), ("Ada", "Lovelace Labs"))
    started = sample_pick.as_trained(form.dataset, *form.identity)  # what Start trains on: the fields now
    assert Path(started["path"]) == Path(folder) / "filled" / "identity-ada.jsonl"
    text = Path(started["path"]).read_text()
    assert "I am Ada" in text and "Lovelace Labs" in text and "{{" not in text
    assert not first.exists(), "one filled copy per visitor: a started run has its own snapshot"
    assert sample_pick.as_trained({"path": "/x/up.jsonl", "name": "up.jsonl"}, "Ada", "") == {
        "path": "/x/up.jsonl", "name": "up.jsonl"}  # any other dataset as it is

    with pytest.raises(gr.Error, match="The identity's name is 61 characters long; at most 60"):
        sample_pick.use_sample("identity.jsonl", "x" * 61, "", folder, None)
    with pytest.raises(gr.Error, match="No bundled dataset '../../etc/passwd'"):
        sample_pick.use_sample("../../etc/passwd", "", "", folder, None)


def test_the_api_names_a_sample_by_name_or_path_and_fills_the_identity(tmp_path, home):
    path = train_tab._bundled_path(str(samples.IDENTITY.path), tmp_path, "Ada", "")
    assert path == tmp_path / "filled" / "identity-ada.jsonl" and "I am Ada" in path.read_text()
    assert train_tab._bundled_path("identity.jsonl", tmp_path, "", "").name == "identity-quill.jsonl"
    for name in ("../phi3lora/samples/identity.jsonl", str(samples.SAMPLES_DIR), "identity.json"):
        with pytest.raises(gr.Error, match="is not a dataset that ships with the app"):
            train_tab._bundled_path(name, tmp_path, "", "")


def test_compare_picks_the_newest_run_until_the_visitor_picks(finished_copy):
    _, run_id = finished_copy
    ref = f"run:{run_id}"
    adapters, *_ = compare_tab.refresh_choices({}, False, [], None, None, None, None)
    assert adapters.value == [ref]
    adapters, *_ = compare_tab.refresh_choices({}, True, [], None, None, None, None)
    assert adapters.value == [], "a visitor who cleared the choice keeps it cleared"
    note = compare_tab.describe_choice([ref], {}, None)
    dataset = lifecycle.run_info(run_id).dataset
    assert note.startswith(f"Comparing base with run **{run_id}** ({dataset}, finished 20"), note
    assert compare_tab.describe_choice(["run:20990101-000000-aaaaaa"], {}, None).startswith("**No adapter chosen**")


def test_the_columns_field_maps_a_files_own_names_for_the_analysis_and_the_job(tmp_path, home):
    """A file whose columns no format names: refused with the mapping it needs, read once the Columns field maps
    them, and the job the form builds carries the mapping (config.yaml, a resumed run)."""
    path = tmp_path / "sums.jsonl"
    path.write_text("".join(json.dumps({"ask": f"What is {n} + {n}?", "reply": f"{2 * n}."}) + "\n" for n in range(6)))
    dataset = {"path": str(path), "name": "sums.jsonl", "source": "uploaded"}
    tokenizers = TokenizerCache()
    with pytest.warns(UserWarning, match="sums.jsonl has no usable conversations"):
        _, problems, *_ = data_tab.analyse(tokenizers, dataset, "auto", None, 512, 0.1)
    assert "--columns" in problems.to_string()
    summary, problems, *_ = data_tab.analyse(tokenizers, dataset, "auto", None, 512, 0.1, "prompt=ask,completion=reply")
    assert "format **prompt_completion**" in summary and "**6** usable conversations" in summary, summary
    with pytest.raises(gr.Error, match="'prompt' is mapped twice"):
        data_tab.analyse(tokenizers, dataset, "auto", None, 512, 0.1, "prompt=ask,prompt=reply")
    with pytest.raises(gr.Error, match="20,006 characters, over the 10,000 a mapping may take"):
        data_tab.analyse(tokenizers, dataset, "auto", None, 512, 0.1, "prompt" + "=" * 20_000)
    with pytest.warns(UserWarning, match="no usable conversations"):
        _, problems, *_ = data_tab.analyse(tokenizers, dataset, "auto", None, 512, 0.1, "prompt=nowhere,completion=reply")
    assert "the file has no column 'nowhere'; its columns are 'ask', 'reply'" in problems.to_string()
    config = train_tab.form_config(dataset, "auto", False, 0.1, "lora", (), "prompt=ask,completion=reply")
    assert config.data.columns == {"prompt": "ask", "completion": "reply"}
    assert train_tab.form_config(dataset, "auto", False, 0.1, "lora", (), "  ").data.columns is None
