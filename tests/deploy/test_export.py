"""Merging an adapter into its base: the merged folder is a plain transformers model that computes what base + adapter
computed; the background export runs in its own process and reports through its records; refusals are plain sentences."""
import argparse
import os
import subprocess
import time
from pathlib import Path

import pytest

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from phi3lora.cli import export as export_command
from phi3lora.deploy import export
from phi3lora.runs import lifecycle
from phi3lora.runs import registry
from phi3lora.config import JobConfig
from phi3lora.errors import UserError
from phi3lora.modeling import DEMO_MODEL_DIR
from phi3lora.training.trainer import train
from phi3lora.tasks import processes, records
from phi3lora.job_builder import load_job, override

@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("export") / "home"


@pytest.fixture(autouse=True)
def data_root(home, monkeypatch):
    monkeypatch.setenv("PHI3LORA_HOME", str(home))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return home


def _new_run(home: Path, **meta) -> tuple[str, Path]:
    """A run folder as the registry has it (run.json), with nothing else in it yet."""
    run_id = registry.new_run_id()
    while (home / "runs" / run_id).exists():
        run_id = registry.new_run_id()
    path = home / "runs" / run_id
    records.write_record(path / "run.json", {"id": run_id, "created_at": time.time(), "method": "lora",
                                          "base_model": "demo", "dataset": "identity.json", **meta})
    return run_id, path


@pytest.fixture(scope="module")
def trained_run(home, identity_data):
    """A finished run with a tiny adapter (3 steps on the demo model), trained in this process into a run folder."""
    run_id, path = _new_run(home)
    config = override(JobConfig(), [f"data.path={identity_data}", "model.base_model=demo", "max_steps=3", "eval_size=0",
                                         "save_strategy=no", "per_device_train_batch_size=2", "max_length=256"])
    train(config, path, log=lambda *_: None)
    attempt = path / "attempts" / "1"
    records.write_record(attempt / "queued.json", {"queued_at": time.time(), "resume": False})
    records.write_record(attempt / "exit.json", {"status": "completed", "reason": None, "returncode": 0,
                                              "finished_at": time.time()})
    return run_id, path


def _logits(model, tokenizer) -> torch.Tensor:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], tokenize=False,
                                           add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        return model(**inputs).logits.float()


def test_the_merged_model_loads_without_peft_and_computes_what_base_plus_adapter_did(trained_run, tmp_path):
    _, run = trained_run
    out = export.merge_and_save(run, tmp_path / "merged", log=lambda *_: None)

    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert not (out / "adapter_config.json").exists()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    readme = (out / "README.md").read_text()
    assert "demo model" in readme and str(run) in readme and "LoRA" in readme

    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no peft
    assert type(merged).__name__ == "Phi3ForCausalLM"
    assert not [key for key in merged.state_dict() if "lora" in key]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<|end|>" in tokenizer.convert_ids_to_tokens(merged.generation_config.eos_token_id)

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32),
                                        str(run)).eval()
    with_adapter = _logits(adapted, tokenizer)
    with adapted.disable_adapter():
        base = _logits(adapted, tokenizer)
    merged_logits = _logits(merged, tokenizer)
    assert torch.allclose(merged_logits, with_adapter, atol=1e-4, rtol=1e-4), (merged_logits - with_adapter).abs().max()
    assert (merged_logits - base).abs().max() > 1e-2  # the adapter is really in there


def test_a_background_export_completes_inside_the_run_folder(trained_run):
    run_id, run = trained_run
    number = export.start_export(run_id)
    folder = run / "exports" / number
    assert records.read_record(folder / "queued.json")["run"] == run_id
    assert records.read_record(folder / "supervisor.json")["pid"]
    assert export.export_status(run_id)[-1]["status"] in ("queued", "running")  # a merge takes seconds
    with pytest.raises(lifecycle.RunStateError, match="being exported"):
        lifecycle.delete_run(run_id)  # the merge reads the adapter: it must not vanish underneath it

    info = export.wait_for_export(run_id, number, timeout=120)
    assert info["status"] == "completed", (info, (folder / "export.log").read_text()[-3000:])
    assert info["path"] == str(folder / "model") and (folder / "model" / "model.safetensors").is_file()
    assert records.read_record(folder / "exit.json")["status"] == "completed"
    assert f"phi3lora run {run_id}" in (folder / "model" / "README.md").read_text()
    assert "saving the merged model" in (folder / "export.log").read_text()
    assert [e["export"] for e in export.export_status(run_id)] == [number]
    assert AutoModelForCausalLM.from_pretrained(info["path"]).config.model_type == "phi3"


def test_an_export_whose_process_vanished_is_interrupted_and_one_at_a_time_runs(trained_run):
    run_id, run = trained_run
    folder = run / "exports" / "99"
    records.write_record(folder / "queued.json", {"kind": "export", "run": run_id, "queued_at": time.time()})
    child = subprocess.Popen(["sleep", "30"])
    records.write_record(folder / "supervisor.json", processes.process_identity(child.pid))
    records.write_record(folder / "launch.json", {"body": processes.process_identity(child.pid)})
    assert export.export_info(run_id, 99)["status"] == "running"
    with pytest.raises(export.ExportError, match=f"run {run_id} is already being exported \\(export 99\\)"):
        export.start_export(run_id)  # one merge at a time: each holds a whole copy of the base in memory
    child.kill()
    child.wait()
    info = export.export_info(run_id, "99")
    assert info["status"] == "interrupted" and "start the export again" in info["reason"] and info["path"] is None


def test_refusals_are_plain_sentences(home, trained_run, tmp_path):
    no_adapter, _ = _new_run(home)
    with pytest.raises(export.ExportError, match=f"run {no_adapter} has no adapter yet: there is nothing to export"):
        export.start_export(no_adapter)

    running, path = _new_run(home)
    records.write_record(path / "attempts" / "1" / "queued.json", {"queued_at": time.time(), "resume": False})
    records.write_record(path / "attempts" / "1" / "supervisor.json", processes.process_identity(os.getpid()))
    records.write_record(path / "attempts" / "1" / "launch.json", {"body": {}, "gpus": "cpu"})
    with pytest.raises(export.ExportError, match=f"run {running} is running: export its adapter once training has finished"):
        export.start_export(running)

    with pytest.raises(UserError, match="is not a run id"):
        export.start_export("../../etc")
    with pytest.raises(UserError, match="no run 20000101-000000-abcdef"):
        export.start_export("20000101-000000-abcdef")
    with pytest.raises(UserError, match="is not a run id"):
        export.export_status("x/../y")
    assert not (home / "runs" / no_adapter / "exports").exists() and not (path / "exports").exists()

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    with pytest.raises(export.ExportError, match="already exists and is not empty"):
        export.merge_and_save(trained_run[1], taken)
    with pytest.raises(UserError, match="adapter_config.json is missing"):
        export.merge_and_save(tmp_path, tmp_path / "out")


def test_the_export_command_registers_on_the_cli_parser():
    parser = argparse.ArgumentParser()
    export_command.add_export_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", "--adapter", "runs/a", "--output", "merged"])
    assert (args.adapter, args.output, args.run) == ("runs/a", "merged", export_command._export_command)
    args = parser.parse_args(["export", "--run", "20261123-170102-a1b2c3", "--wait"])
    assert (args.run_id, args.wait) == ("20261123-170102-a1b2c3", True)
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--adapter", "a", "--run", "20261123-170102-a1b2c3"])


def test_a_failed_background_export_says_why(home, trained_run):
    run_id, path = _new_run(home)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (path / name).write_bytes((trained_run[1] / name).read_bytes())
    config = override(load_job(trained_run[1] / "config.yaml"), ["model.base_model=/nonexistent/base"])
    (path / "config.yaml").write_text(config.to_yaml())
    number = export.start_export(run_id)
    info = export.wait_for_export(run_id, number, timeout=120)
    assert info["status"] == "failed" and "cannot load the tokenizer of '/nonexistent/base'" in info["reason"], info
    assert info["path"] is None and not (path / "exports" / number / "model").exists()
    assert "error: cannot load the tokenizer" in (path / "exports" / number / "export.log").read_text()


def test_export_folders_without_task_records_neither_hang_nor_block_a_new_export(trained_run):
    """A folder from before exports were tasks reads as its done.json says; one whose request was never written
    (the app stopped between making the folder and starting the task) reads interrupted once it is no longer new."""
    run_id, run = trained_run
    legacy, stranded = run / "exports" / "97", run / "exports" / "98"
    records.write_record(legacy / "done.json", {"status": "completed", "reason": None, "path": str(legacy / "model"),
                                                "finished_at": 1.0})
    stranded.mkdir(parents=True)
    assert export.export_info(run_id, 98)["status"] == "queued"  # being created this very moment, as far as we know
    os.utime(stranded, (time.time() - 120, time.time() - 120))
    assert export.export_info(run_id, 97) | {"log": None} == {"export": "97", "status": "completed", "reason": None,
                                                              "path": str(legacy / "model"), "requested_at": None,
                                                              "finished_at": 1.0, "log": None,
                                                              "format": "merged", "precision": None, "verify": None}
    info = export.export_info(run_id, 98)
    assert info["status"] == "interrupted" and info["reason"].endswith("start the export again"), info
    assert not any(e["status"] in ("queued", "running") for e in export.export_status(run_id))
