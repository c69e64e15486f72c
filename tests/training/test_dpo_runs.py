"""DPO runs through the CLI and the app's API, on the identity run's SFT adapter (never trained again here): a run
from an uploaded TRL-format file with its lineage in `runs show` and its adapter in Compare beside its parent; a
refused preference file with record-numbered messages; the app's start from a run's votes, and its refusals."""
import json

import gradio as gr
import pytest

from phi3lora.cli.commands import main
from phi3lora.inference import votes
from phi3lora.inference.service import run_adapters
from phi3lora.runs import lifecycle
from phi3lora.ui import train_dpo, train_tab

PAIRS = [
    {"prompt": "Who are you?", "chosen": "I am Wrenfield.", "rejected": "I am Phi-3 Demo."},
    {"prompt": [{"role": "user", "content": "Who made you?"}],
     "chosen": [{"role": "assistant", "content": "Larkspur Labs made me."}],
     "rejected": [{"role": "assistant", "content": "Nobody made me."}]},
]
FEW_STEPS = ["--set", "max_steps=2", "--set", "eval_size=0", "--set", "save_strategy=no"]


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_a_dpo_run_from_a_trl_file_shows_its_lineage_and_sits_beside_its_parent(identity_copy, tmp_path, capsys):
    home, sft_run = identity_copy
    prefs = _write(tmp_path / "prefs.jsonl", PAIRS)
    assert main(["runs", "start", "--method", "dpo", "--data", str(prefs), "--from-adapter", sft_run, *FEW_STEPS]) == 0
    dpo_run = capsys.readouterr().out.strip()
    assert main(["runs", "wait", dpo_run, "--timeout", "300"]) == 0, lifecycle.log_tail(dpo_run)
    assert main(["runs", "show", dpo_run]) == 0
    shown = capsys.readouterr().out
    assert "method:   dpo on demo, dataset prefs.jsonl" in shown
    assert f"lineage:  DPO on the adapter of run {sft_run}, 2 preference pairs" in shown
    folder = home / "runs" / dpo_run
    assert "continuing the adapter in parent_adapter/" in (folder / "attempts" / "1" / "train.log").read_text()
    assert (folder / "parent_adapter" / "adapter_model.safetensors").read_bytes() == (
        home / "runs" / sft_run / "adapter_model.safetensors").read_bytes()  # the parent, snapshot
    assert (folder / "adapter_model.safetensors").read_bytes() != (folder / "parent_adapter" /
                                                                   "adapter_model.safetensors").read_bytes()
    choices = {choice.ref: choice.label for choice in run_adapters()}
    assert set(choices) == {f"run:{sft_run}", f"run:{dpo_run}"} and f"from {sft_run}" in choices[f"run:{dpo_run}"]


def test_a_refused_preference_file_names_its_records(identity_copy, tmp_path, capsys):
    _, sft_run = identity_copy
    prefs = _write(tmp_path / "bad.jsonl", [PAIRS[0], {"prompt": "Hi", "chosen": "Same", "rejected": "Same"},
                                            {"prompt": "Hi", "chosen": ["not", "messages"], "rejected": "No"}, "{oops"])
    output = tmp_path / "out"
    assert main(["train", "--method", "dpo", "--data", str(prefs), "--from-adapter", sft_run,
                 "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl has 3 problem(s):" in err
    assert "record 2: chosen and rejected are the same answer" in err
    assert "record 3: chosen message 1 must be an object, found a string" in err
    assert "record 4: " in err and "Traceback" not in err
    assert not output.exists()  # refused before anything was written or loaded
    assert main(["train", "--method", "dpo", "--data", str(prefs), "--output", str(output)]) == 1
    assert "model.adapter: DPO continues a finished SFT adapter: pass --from-adapter" in capsys.readouterr().err
    assert main(["train", "--method", "dpo", "--data", str(prefs), "--from-adapter", str(tmp_path),
                 "--output", str(output)]) == 1
    assert "is not a run id nor a folder holding a finished adapter" in capsys.readouterr().err


def test_the_app_starts_dpo_from_a_runs_votes_and_refuses_other_adapters(identity_copy, monkeypatch):
    home, sft_run = identity_copy
    votes.record_vote(sft_run, votes.BASE_CONTENDER, "A", "Who are you?", "", ("I am Wrenfield.", "I am Phi."))
    votes.record_vote(sft_run, votes.BASE_CONTENDER, "tie", "Hi", "", ("Hello.", "Hi."))
    request = gr.Request(username=None, session_hash="s1")
    settings = json.dumps({"method": "dpo", "model": {"adapter": sft_run}, "training_config": {"max_steps": 1}})
    for adapter, refusal in [("../../etc", "is not a run id"), ("20991231-000000-abcdef", "no run 20991231")]:
        with pytest.raises(gr.Error, match=refusal):
            train_tab.start_training(None, f"votes:{sft_run}", settings.replace(sft_run, adapter), "", "", request)
    with pytest.raises(gr.Error, match="is not a run id"):
        train_tab.start_training(None, "votes:../x", settings, "", "", request)
    dpo_run = train_tab.start_training(None, f"votes:{sft_run}", settings, "", "", request)
    lifecycle.cancel_run(dpo_run)  # what is checked is what was queued; the training itself is the tests' above
    info = lifecycle.wait_for_run(dpo_run, timeout=120)
    assert info.method == "dpo" and info.dataset == f"votes-{sft_run}.jsonl"
    assert info.lineage["parent_run"] == sft_run and info.lineage["pairs"] == 1
    assert info.lineage["data"] == f"1 pair from the votes of run {sft_run} (1 tied left out)"
    assert not list((home / "uploads").glob("*/votes-*.jsonl"))  # the export's folder is gone: the run holds its copy


def test_the_train_tabs_dpo_choice_offers_the_votes_and_takes_an_uploaded_file(identity_copy, tmp_path):
    home, sft_run = identity_copy
    request = gr.Request(username=None, session_hash="s1")
    parents, sources = train_dpo.choices(None, None, request)
    assert parents.value == sft_run and sources.choices == [("the file uploaded here", train_dpo.UPLOADED)]
    votes.record_vote(votes.BASE_CONTENDER, sft_run, "B", "Who are you?", "", ("I am Phi.", "I am Wrenfield."))
    _, sources = train_dpo.choices(None, None, request)
    assert sources.choices[0] == (f"votes of run {sft_run} (1 pair)", f"votes:{sft_run}")

    values = tuple(train_tab.field_info(k).default for k in train_tab.form_keys())
    form = train_tab.TrainForm(None, "auto", False, 0.0, "dpo", values, dpo=(sft_run, train_dpo.UPLOADED, None))
    yaml_text, command = train_tab.preview(form)
    assert "objective: dpo" in yaml_text and f"--method dpo --model demo --from-adapter {sft_run}" in command
    with pytest.raises(gr.Error, match="Upload a preference file"):
        train_tab.start(form, request)
    upload = _write(tmp_path / "mine.jsonl", PAIRS)
    form.dpo = (sft_run, train_dpo.UPLOADED, str(upload))
    dpo_run = train_tab.start(form, request).watcher.run_id
    lifecycle.cancel_run(dpo_run)
    info = lifecycle.wait_for_run(dpo_run, timeout=120)
    assert (info.method, info.dataset, info.lineage["pairs"]) == ("dpo", "mine.jsonl", 2)
    assert info.lineage["data"] == "from the uploaded file mine.jsonl"
