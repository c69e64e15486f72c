"""Where a DPO job comes from (runs/lineage.py, job_builder.resolve_job): the parent adapter's base model and LoRA
shape fill the job, another base is refused, and what is not a finished adapter is refused by name. No model."""
import json

import pytest

from phi3lora.config import ConfigError
from phi3lora.job_builder import build_job, resolve_job, values_layer
from phi3lora.modeling import DEMO_MODEL_DIR
from phi3lora.runs.lineage import ParentError
from phi3lora.runs.registry import RunNotFound
from phi3lora.tasks.records import write_record


def _adapter(folder, **lora):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": str(DEMO_MODEL_DIR), "peft_type": "LORA", "r": 8, "lora_alpha": 16,
        "lora_dropout": 0.0, "target_modules": ["o_proj", "qkv_proj"], "bias": "none", "use_rslora": False, **lora}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def _dpo(adapter, **more):
    return build_job(values_layer({"method": "dpo", "model.adapter": str(adapter), "data.path": "prefs.jsonl", **more}))


def test_a_dpo_job_takes_its_parents_base_and_lora_shape(tmp_path):
    config, _ = resolve_job(_dpo(_adapter(tmp_path / "sft")))
    assert config.method == "dpo" and config.model.base_model == "demo"
    assert (config.peft_config.r, config.peft_config.lora_alpha, config.peft_config.target_modules) == (
        8, 16, ["o_proj", "qkv_proj"])
    assert resolve_job(config)[0] == config  # resolving again changes nothing
    with pytest.raises(ParentError, match="model.base_model: microsoft/Phi-3-mini-4k-instruct, but the adapter in "
                                          "sft/ was trained on"):
        resolve_job(_dpo(tmp_path / "sft", **{"model.base_model": "microsoft/Phi-3-mini-4k-instruct"}))
    odd, _ = resolve_job(_dpo(_adapter(tmp_path / "odd", target_modules=["q_proj"])))  # not a Phi-3 module name
    assert odd.peft_config.r == 16  # a shape the config cannot hold leaves the job's own


def test_what_is_not_a_finished_adapter_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path / "home"))
    write_record(tmp_path / "home" / "runs" / "20261130-120000-aaaaaa" / "run.json", {"id": "20261130-120000-aaaaaa"})
    with pytest.raises(ConfigError, match="model.adapter: DPO continues a finished SFT adapter"):
        resolve_job(build_job(values_layer({"method": "dpo"})))
    with pytest.raises(ParentError, match="run 20261130-120000-aaaaaa has no adapter yet"):
        resolve_job(_dpo("20261130-120000-aaaaaa"))
    with pytest.raises(ParentError, match="empty is not a run id nor a folder holding a finished adapter"):
        (tmp_path / "empty").mkdir()
        resolve_job(_dpo(tmp_path / "empty"))
    with pytest.raises(RunNotFound, match="no run 20991231-000000-abcdef"):
        resolve_job(_dpo("20991231-000000-abcdef"))
    with pytest.raises(ConfigError, match="method: must be lora, qlora or dpo"):
        build_job(values_layer({"method": "ppo"}))
