"""Where a preference (DPO) run comes from: the finished SFT adapter it continues (`model.adapter`: a run id or an
adapter folder), the base model that adapter was trained on, and the lineage a run records in run.json (parent run,
adapter, pairs used and what the votes left out), which `runs show` and the Runs tab print.

A run snapshots its parent's adapter into its own folder (`parent_adapter/`), as it snapshots its dataset: resuming
it, or deleting the parent, never changes what it continues from. No torch here.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import JobConfig, load_yaml
from ..errors import UserError
from . import registry

PARENT_FOLDER = "parent_adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ParentError(UserError, ValueError):
    """model.adapter names no finished adapter, or one on another base model."""


@dataclass(frozen=True)
class Parent:
    adapter_dir: Path
    run_id: str | None  # None for an adapter folder outside the registry
    base_model: str | None  # as its job named it ("demo"), or its adapter_config's; None when neither says

    def describe(self) -> str:
        return f"the adapter of run {self.run_id}" if self.run_id else f"the adapter in {self.adapter_dir.name}/"


def find_parent(adapter: str) -> Parent:
    """The adapter `model.adapter` names; refuses one that is missing, unfinished or still training."""
    if registry.RUN_ID.fullmatch(adapter):
        path = registry.run_dir(adapter)
        problem = registry.adapter_problem(adapter, path, "continue", "continue it with DPO")
        if problem:
            raise ParentError(f"model.adapter: {problem}")
        run_id = adapter
    else:
        path = Path(adapter).expanduser()
        if not registry.has_adapter(path):
            raise ParentError(f"model.adapter: {Path(adapter).name or adapter} is not a run id nor a folder holding "
                              f"a finished adapter ({' and '.join(ADAPTER_FILES)})")
        run_id = None
    return Parent(path, run_id, _base_model(path))


def _base_model(adapter_dir: Path) -> str | None:
    """The base the adapter was trained on: its run's job says it portably ("demo"); else adapter_config.json."""
    job = adapter_dir / "config.yaml"
    if job.is_file():  # as the run wrote it: whole, so no layers to build (job_builder builds jobs from this module)
        return JobConfig.from_dict(load_yaml(job.read_text(encoding="utf-8"), job.name)).model.base_model
    try:
        values = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = values.get("base_model_name_or_path") if isinstance(values, dict) else None
    return base if isinstance(base, str) and base else None


LORA_SETTINGS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora")


def lora_settings(parent: Parent) -> dict:
    """The parent adapter's LoRA shape (peft_config.* -> value) from its adapter_config.json: DPO trains that
    adapter, so the run's config.yaml says what it really is rather than the defaults."""
    try:
        values = json.loads((parent.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(values, dict):
        return {}
    found = {f"peft_config.{name}": values[name] for name in LORA_SETTINGS if values.get(name) is not None}
    if isinstance(found.get("peft_config.target_modules"), list):  # peft saves a set: keep one order
        found["peft_config.target_modules"] = sorted(found["peft_config.target_modules"])
    return found


def check_base(parent: Parent, base_model: str | None) -> None:
    """A base model set by the user must be the one the adapter was trained on."""
    from ..base_model import choose_base_model  # torch-free

    if not (base_model and parent.base_model):
        return
    given, trained_on = choose_base_model(base_model), choose_base_model(parent.base_model)
    if not (given.is_demo and trained_on.is_demo) and given.name_or_path != trained_on.name_or_path:
        raise ParentError(f"model.base_model: {base_model}, but {parent.describe()} was trained on "
                          f"{parent.base_model}; leave base_model empty to use it")


def snapshot(parent: Parent, run_folder: Path) -> Path:
    """Copy the parent's adapter files into the run folder; returns the copy's folder."""
    target = run_folder / PARENT_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copyfile(parent.adapter_dir / name, target / name)
    if (parent.adapter_dir / "config.yaml").is_file():  # the parent's job: its base model, named portably
        shutil.copyfile(parent.adapter_dir / "config.yaml", target / "config.yaml")
    return target


def lineage_record(parent: Parent, pairs: int, data_note: str | None) -> dict:
    """What run.json keeps of where a DPO run comes from."""
    return {"parent_run": parent.run_id, "parent_adapter": str(parent.adapter_dir), "pairs": pairs,
            "data": data_note}


def describe(lineage: dict | None) -> str | None:
    """One line for `runs show` and the Runs tab: `DPO on run X's adapter, 12 pairs (...)`."""
    if not lineage:
        return None
    parent = f"run {lineage['parent_run']}" if lineage.get("parent_run") else f"adapter {lineage.get('parent_adapter')}"
    line = f"DPO on the adapter of {parent}, {lineage.get('pairs')} preference pairs"
    return line + (f": {lineage['data']}" if lineage.get("data") else "")
