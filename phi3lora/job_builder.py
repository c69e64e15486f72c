"""One builder for a fine-tuning job. Every way of giving settings becomes a layer of `section.field` overrides:

    file_layer(path)              config.yaml, or any YAML/JSON job file (--config)
    text_layer(text, where)       YAML/JSON text: the API's settings
    values_layer(values)          a mapping: the Train form's values, the CLI's flags
    assignments_layer(strings)    `key=value` strings: --set

`build_job(*layers)` merges them in the order given (later wins, as torchtune's `config.parse` merges a YAML file
and key=value overrides) and validates the result once into a JobConfig that remembers which fields a layer set.
`resolve_job(config)` then fills in, in this one place, what no layer set: the base model this machine uses and
the demo model's own training defaults. `write_job_file` writes the resolved job once; `assignments_for` is the
way back, the --set strings that rebuild a job (the Train tab's command line).

Every layer takes the same keys: sections as in config.yaml ({"training_config": {"max_steps": 6}}), dotted names
("peft_config.r"), bare field names where unique ("max_steps"), and `method: lora|qlora` (model.load_in_4bit) or
`method: dpo` (training_config.objective).
Every refusal is one line that starts with the setting it concerns, whichever layer it came from:
`training_config.learning_rate: Input should be greater than 0 (got -1)`.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import SECTIONS, ConfigError, JobConfig, load_yaml, section_fields, setting_name, shorten
from .runs.lineage import check_base, find_parent, lora_settings

METHODS = {"lora": False, "qlora": True}  # method -> model.load_in_4bit: the one place the two are mapped
PREFERENCE_METHODS = ("dpo",)  # method -> training_config.objective (LoRA on the SFT adapter's base)
JOB_FILE = "config.yaml"
# A 5M-parameter model learns slowly at Phi-3-mini's settings; these apply to the demo model unless the user set them.
DEMO_TRAINING_DEFAULTS = {
    "learning_rate": 5e-3,
    "num_train_epochs": 5.0,  # the identity sample (90 conversations) answers with its name after 5 (55 steps)
    "per_device_train_batch_size": 8,
    "max_length": 512,
    "gradient_checkpointing": False,  # nothing to save on a model this small, only time to lose
}
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")  # a text value --set carries without quotes


@dataclass(frozen=True)
class Layer:
    """One source's settings: checked `section.field` names -> values, validated when the layers are built."""

    values: dict[str, Any]


def build_job(*layers: Layer, base: JobConfig | None = None) -> JobConfig:
    """The job the layers give, later layers winning, over `base` (the fields it set) or the defaults. Only the
    fields some layer set count as set (`explicitly_set`), so resolve_job's defaults never overwrite them."""
    given = base.explicitly_set() if base is not None else set()
    values = {key: value for key, value in _flat(base).items() if key in given} if base is not None else {}
    for layer in layers:
        values.update(layer.values)
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    return JobConfig.from_dict(nested)


# --- the layers -----------------------------------------------------------------------------------------------

def load_job(path: str | Path) -> JobConfig:
    """The job in a YAML file, e.g. a run's config.yaml."""
    return build_job(file_layer(path))


def override(config: JobConfig, assignments: Iterable[str]) -> JobConfig:
    """`config` with `key=value` strings applied (`training_config.learning_rate=2e-4`, or a bare field name)."""
    return build_job(assignments_layer(assignments), base=config)


def file_layer(path: str | Path) -> Layer:
    name = Path(path).name
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {name}: {getattr(error, 'strerror', None) or error}") from None
    return text_layer(text, f"config file {name}")


def text_layer(text: str | None, where: str = "settings") -> Layer:
    """YAML or JSON text holding a mapping; empty text is an empty layer."""
    values = load_yaml(text, where) if text and text.strip() else None
    if values is None:
        return Layer({})
    if not isinstance(values, dict):
        raise ConfigError(f'{where} must be a mapping, e.g. {{"training_config": {{"max_steps": 6}}}} '
                          f"(got {type(values).__name__})")
    return values_layer(values)


def values_layer(values: Mapping[Any, Any]) -> Layer:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key == "method":
            if not isinstance(value, str) or value not in (*METHODS, *PREFERENCE_METHODS):
                raise ConfigError(f"method: must be lora, qlora or dpo (got {shorten(value)})")
            if value in PREFERENCE_METHODS:
                flat["training_config.objective"] = value
            else:
                flat["model.load_in_4bit"] = METHODS[value]
        elif key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: must be a mapping of its settings (got {shorten(value)})")
            flat.update((_locate(f"{key}.{name}"), inner) for name, inner in value.items())
        else:
            flat[_locate(key)] = value
    if flat.get("data.columns") is not None:
        flat["data.columns"] = _column_mapping(flat["data.columns"])
    return Layer(flat)


def _column_mapping(value: Any) -> dict[str, str] | None:
    """data.columns checked as the data layer reads it, from a mapping or its text ("prompt=question,...", as
    --columns, --set and a form give it); no mapping is null."""
    from .data.columns import ColumnsError, check_columns

    try:
        return check_columns(value) or None
    except ColumnsError as error:
        raise ConfigError(f"data.columns: {str(error).removeprefix('column mapping: ')}") from None


def assignments_layer(assignments: Iterable[str]) -> Layer:
    """`key=value` strings; each value is read as YAML (`r=8`, `target_modules=[qkv_proj, o_proj]`), empty is null."""
    flat: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep:
            raise ConfigError(f"--set {shorten(assignment)}: expected key=value, e.g. training_config.learning_rate=2e-4")
        key = key.strip()
        name = key if key in SECTIONS or key == "method" else _locate(key)  # a bad name before its value
        value = load_yaml(raw, f"the value of {setting_name(name)}") if raw.strip() else None
        flat.update(values_layer({name: value}).values)
    return Layer(flat)


def _locate(key: Any) -> str:
    """`section.field` for a dotted name, or for a bare field name that exactly one section has."""
    key = str(key)
    section, dot, name = key.partition(".")
    if dot:
        if section not in SECTIONS:
            raise ConfigError(f"{setting_name(key)}: unknown section {shorten(section)}; sections are {', '.join(SECTIONS)}")
        if name not in section_fields(section):
            raise ConfigError(f"{setting_name(key)}: unknown setting")
        return key
    matches = [section for section in SECTIONS if key in section_fields(section)]
    if len(matches) > 1:
        raise ConfigError(f"{setting_name(key)}: ambiguous, write one of {', '.join(f'{m}.{key}' for m in matches)}")
    if not matches:
        raise ConfigError(f"{setting_name(key)}: unknown setting")
    return f"{matches[0]}.{key}"


# --- what the user left open ---------------------------------------------------------------------------------

def resolve_job(config: JobConfig) -> tuple[JobConfig, str]:
    """Fill in what no layer set: the base model this machine uses ("demo" for the embedded one, so the YAML stays
    portable) and, for the demo model, its own training defaults. Fields a user set stay; resolving a resolved job
    changes nothing; a job the base model cannot take (max_length past its positions) is refused here, before any
    run is queued or weights load. Returns (config, a line for the user saying what was filled in)."""
    from .base_model import choose_base_model  # no torch where this machine has no GPU it could use

    config = _with_parent_base(config)
    choice = choose_base_model(config.model.base_model)
    given = config.explicitly_set()
    filled = {k: v for k, v in _model_defaults(choice.is_demo).items() if k not in given} if choice.is_demo else {}
    resolved = build_job(values_layer({"model.base_model": _portable(choice), **filled}), base=config)
    from .training.preflight import check_job_if_readable  # the one check of the job against the model's config.json

    check_job_if_readable(resolved, choice.name_or_path)
    from .training.options import check_options  # early stopping's eval split, report_to's package

    check_options(resolved)
    note = f"base model: {choice}"
    if filled:
        note += "; demo-model defaults: " + ", ".join(f"{k.partition('.')[2]}={v}" for k, v in filled.items())
    return resolved, note


def _with_parent_base(config: JobConfig) -> JobConfig:
    """A DPO job runs on the base its SFT adapter (model.adapter) was trained on: filled in when no layer set it,
    refused when one set another. Its peft_config is the adapter's own LoRA shape (that is what trains)."""
    if config.training_config.objective != "dpo":
        return config
    if not config.model.adapter:
        raise ConfigError("model.adapter: DPO continues a finished SFT adapter: pass --from-adapter RUN_OR_DIR "
                          "(a run id or an adapter folder)")
    parent = find_parent(config.model.adapter)
    check_base(parent, config.model.base_model)
    filled = {} if config.model.base_model or not parent.base_model else {"model.base_model": parent.base_model}
    try:  # the adapter's own LoRA shape; one this config cannot express (other modules) stays as the job says
        return build_job(values_layer({**lora_settings(parent), **filled}), base=config)
    except ConfigError:
        return build_job(values_layer(filled), base=config)


def model_defaults(base_model: str | None) -> dict[str, Any]:
    """The training settings whose default depends on the base model (`training_config.max_length`: 512 for the
    demo model, 2048 otherwise): what the Train form shows, so that what it says is what runs."""
    from .base_model import choose_base_model

    return _model_defaults(choose_base_model(base_model or None).is_demo)


def default_base_model() -> str:
    """The base model of a job that names none, on this machine, as a job names it."""
    from .base_model import choose_base_model

    return _portable(choose_base_model(None))


def _model_defaults(demo: bool) -> dict[str, Any]:
    fields = section_fields("training_config")
    return {f"training_config.{k}": v if demo else fields[k].default for k, v in DEMO_TRAINING_DEFAULTS.items()}


def _portable(choice) -> str:
    return "demo" if choice.is_demo else choice.name_or_path


# --- written once, and the way back --------------------------------------------------------------------------

def write_job_file(config: JobConfig, folder: str | Path) -> Path:
    """`folder`/config.yaml, unless it already holds exactly this job: a run's, written when jobs.start_run queues
    it, is never rewritten by its trainer (nor by each of its processes under accelerate), while a foreground
    `train --output DIR` writes its own. Replaced whole, so a reader never sees half a file."""
    path = Path(folder) / JOB_FILE
    text = config.to_yaml()
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    partial = path.with_name(f".{JOB_FILE}.{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path


def assignments_for(config: JobConfig, given: Mapping[str, Any]) -> list[str]:
    """The `key=value` strings that, after the layer `given` (the CLI's --data, --method, --model), rebuild the
    resolved `config` through build_job and resolve_job: its fields that differ from what `given` alone resolves to."""
    flags = values_layer(given)
    plain = _flat(resolve_job(build_job(flags))[0])
    return [f"{key}={_as_text(value)}" for key, value in _flat(config).items()
            if key not in flags.values and value != plain[key]]


def _flat(config: JobConfig) -> dict[str, Any]:
    return {f"{section}.{name}": value for section, fields in config.to_dict().items() for name, value in fields.items()}


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) and _BARE.fullmatch(value) else json.dumps(value)
