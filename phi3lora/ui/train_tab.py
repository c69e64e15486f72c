"""Train tab: the job form (built from the typed config), its YAML / CLI equivalent, the API that starts and
follows runs, and, below the form, the live view of a run (train_progress.py)."""
from __future__ import annotations

import secrets
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import gradio as gr

from ..runs import lifecycle
from ..config import PHI3_EMBEDDING_MODULE, PHI3_LINEAR_MODULES, ConfigError, JobConfig, field_help, section_fields
from ..job_builder import (assignments_for, build_job, default_base_model, model_defaults, resolve_job, text_layer,
                           values_layer)
from ..base_model import DEFAULT_GPU_MODEL
from ..data.samples import shipped_samples
from . import memory_view, sample_pick, train_dpo, train_progress
from .common import bundled_datasets, is_bundled, shows_errors, take_upload, uploads_root
from .state import handler, input_set, read
from .train_progress import ProgressView, RunOnView, tick
from .visitors import require_allowed_base, require_run, require_training

# In view; every other model / training_config / peft_config field goes into the Advanced accordion.
MAIN_FIELDS = ("model.base_model", "training_config.num_train_epochs", "training_config.learning_rate",
               "peft_config.r", "peft_config.lora_alpha", "training_config.max_length")
FORM_SECTIONS = ("model", "training_config", "peft_config")  # `data` is set on the Data tab
NOT_IN_FORM = ("model.load_in_4bit",)  # the LoRA / QLoRA choice sets it
TARGET_CHOICES = [*PHI3_LINEAR_MODULES, PHI3_EMBEDDING_MODULE, "all-linear"]
BASE_MODEL_CHOICES = ["demo", DEFAULT_GPU_MODEL, "microsoft/Phi-3-mini-128k-instruct"]


@dataclass
class TrainTab:
    method: gr.Radio
    fields: dict[str, gr.Component]  # "section.field" -> its input, in form order
    preview_button: gr.Button
    yaml_view: gr.Code
    cli_view: gr.Code
    start_button: gr.Button
    view: ProgressView  # of the run on view
    dpo: train_dpo.DpoInputs | None = None  # the DPO choice's parent run and pairs
    memory: gr.Markdown | None = None  # the memory estimate, as the settings change (memory_view.py)

    @property
    def base_model(self) -> gr.Component:
        return self.fields["model.base_model"]

    @property
    def max_length(self) -> gr.Component:
        return self.fields["training_config.max_length"]


@dataclass
class TrainForm:
    """What the form says: the Data tab's dataset settings, the method, and every field's value."""
    dataset: dict | None  # the Data tab's {"path", "name", "source"}
    data_format: str
    drop_invalid: bool
    eval_size: float | None
    method: str
    values: tuple  # the fields' values, in form_keys() order
    identity: tuple = ("", "")  # the Data tab's Name and Maker, for a fillable sample
    columns: str = ""  # the Data tab's column mapping, "prompt=question,completion=answer"
    dpo: tuple = (None, None, None)  # DPO: the parent run, the pairs' source, the uploaded preference file


@dataclass
class TrainFormInputs:
    """The components TrainForm is read from: the Data tab's, the method and the fields."""
    dataset: gr.State
    data_format: gr.Component
    drop_invalid: gr.Component
    eval_size: gr.Component
    method: gr.Component
    fields: dict[str, gr.Component]  # "section.field" -> its input, in form order
    identity: list[gr.Component] | None = None  # the Data tab's Name and Maker fields
    columns: gr.Component | None = None  # the Data tab's column mapping
    dpo: list[gr.Component] | None = None  # train_dpo.DpoInputs.inputs()

    def by_name(self) -> dict[str, gr.Component | list[gr.Component]]:
        optional = {"identity": self.identity, "columns": self.columns, "dpo": self.dpo}
        return {"dataset": self.dataset, "data_format": self.data_format, "drop_invalid": self.drop_invalid,
                "eval_size": self.eval_size, "method": self.method, "values": list(self.fields.values()),
                **{name: component for name, component in optional.items() if component is not None}}

    def read(self, values: dict) -> TrainForm:
        """The TrainForm of an event's values (inputs=self.inputs())."""
        got = read(values, self.by_name())
        got["values"] = tuple(got["values"])
        for name in ("identity", "dpo"):
            if name in got:
                got[name] = tuple(got[name])
        return TrainForm(**got)

    def inputs(self) -> set[gr.Component]:
        return input_set(self.by_name())


# --- the form, from the config's own fields -----------------------------------------------------------------------

def form_keys() -> list[str]:
    keys = [f"{section}.{name}" for section in FORM_SECTIONS for name in section_fields(section)]
    return [k for k in keys if k not in NOT_IN_FORM]


def field_info(key: str):
    section, name = key.split(".")
    return section_fields(section)[name]


def follow_model_defaults(base_model: str | None, *values: Any) -> list[Any]:
    """After a change of base model: fields still at some model's default take the new model's; typed values stay.

    A typed value is answered with `gr.skip()`, not echoed back, so that a value typed while this event is in flight
    is not overwritten by the stale one it was sent with.
    """
    new = model_defaults(base_model)
    any_default = [model_defaults(model) for model in ("demo", DEFAULT_GPU_MODEL)]
    return [new[key] if any(value == d[key] for d in any_default) else gr.skip() for key, value in zip(new, values)]


def field_component(key: str, value: Any) -> gr.Component:
    """The right input for a field's type, labelled with its name and its help text."""
    info, help_text = field_info(key), field_help()[key]
    label = key.split(".")[1].replace("_", " ")
    annotation = info.annotation
    if key == "model.base_model":
        choices = list(dict.fromkeys([value, *BASE_MODEL_CHOICES]))
        return gr.Dropdown(choices, value=value, label="base model", info=help_text, allow_custom_value=True)
    if key == "peft_config.target_modules":
        return gr.CheckboxGroup(TARGET_CHOICES, value=value, label=label, info=help_text)
    if annotation is bool:
        return gr.Checkbox(value=value, label=label, info=help_text)
    if get_origin(annotation) is Literal:
        return gr.Dropdown(list(get_args(annotation)), value=value, label=label, info=help_text)
    if annotation is int:
        return gr.Number(value=value, label=label, info=help_text, precision=0)
    if annotation is float:
        return gr.Number(value=value, label=label, info=help_text)
    return gr.Textbox(value="" if value is None else str(value), label=label, info=help_text)


def build() -> TrainTab:
    base = default_base_model()
    initial = {k: field_info(k).default for k in form_keys()} | {"model.base_model": base} | model_defaults(base)
    fields: dict[str, gr.Component] = {}
    with gr.Row():
        method = gr.Radio([("LoRA", "lora"), ("QLoRA (4-bit base)", "qlora"), ("DPO on preference pairs", "dpo")],
                          value="lora", label="Method", info=field_help()["model.load_in_4bit"], scale=1)
        fields["model.base_model"] = field_component("model.base_model", base)
    dpo = train_dpo.build()
    with gr.Row():
        for key in MAIN_FIELDS[1:]:
            fields[key] = field_component(key, initial[key])
    with gr.Accordion("Advanced settings", open=False):
        for section in FORM_SECTIONS:
            keys = [k for k in form_keys() if k.startswith(section + ".") and k not in MAIN_FIELDS]
            gr.Markdown(f"**{section}**")
            for row in range(0, len(keys), 4):
                with gr.Row():
                    for key in keys[row:row + 4]:
                        fields[key] = field_component(key, initial[key])
    fields = {k: fields[k] for k in form_keys()}  # one fixed order: handlers receive the values in it
    with gr.Accordion("Show as YAML / as a CLI command (rerun this job from a shell)", open=False):
        preview_button = gr.Button("Show", size="sm")
        with gr.Row():
            yaml_view = gr.Code(language="yaml", label="job.yaml", lines=12, max_lines=30)
            cli_view = gr.Code(language="shell", label="command line", lines=12, max_lines=30, wrap_lines=True)
    memory = memory_view.build({key: value for key, value in initial.items() if value is not None})
    start_button = gr.Button("Start training", variant="primary")

    view = train_progress.build()
    return TrainTab(method, fields, preview_button, yaml_view, cli_view, start_button, view, dpo, memory)


def wire(tab: TrainTab, demo: gr.Blocks, dataset: gr.State, data_format, drop_invalid, eval_size,
         identity: list[gr.Component] | None = None, columns: gr.Component | None = None) -> None:
    """Connect the tab; the dataset settings are the Data tab's (with its Name and Maker fields, `identity`, and
    its column mapping)."""
    private = {"api_visibility": "private"}
    form = TrainFormInputs(dataset, data_format, drop_invalid, eval_size, tab.method, tab.fields, identity, columns,
                           tab.dpo.inputs() if tab.dpo else None)
    if tab.dpo:
        train_dpo.wire(tab.dpo, tab.method)
    view = tab.view
    model_fields = [tab.fields[k] for k in model_defaults(None)]
    tab.base_model.input(follow_model_defaults, [tab.base_model, *model_fields], model_fields, **private)
    tab.preview_button.click(handler(preview, form=form.read), form.inputs(), [tab.yaml_view, tab.cli_view],
                             **private)
    tab.start_button.click(handler(start, form=form.read), form.inputs(), [view.on_view], **private).success(
        tick, [view.on_view], view.shown, **private)
    train_progress.wire(view, demo)
    memory_view.wire(tab.memory, tab.method, tab.fields)


def add_api() -> None:
    """`/start_training`, `/run_status`, `/cancel_training` (hidden components, API only)."""
    dataset_file = gr.File(label="dataset_file", visible=False)
    dataset_name = gr.Textbox(label="dataset", visible=False)
    settings = gr.Textbox(label="settings", visible=False)
    identity = [gr.Textbox(label=label, value="", visible=False) for label in ("identity_name", "identity_maker")]
    run_id_in, run_id_out = gr.Textbox(label="run_id", visible=False), gr.Textbox(label="run_id", visible=False)
    status_out, cancel_out = gr.JSON(label="run", visible=False), gr.Textbox(label="status", visible=False)
    for name, fn, inputs, outputs in [
        ("start_training", start_training, [dataset_file, dataset_name, settings, *identity], [run_id_out]),
        ("run_status", run_status, [run_id_in], [status_out]),
        ("cancel_training", cancel_training, [run_id_in], [cancel_out]),
    ]:
        gr.Button(visible=False).click(fn, inputs, outputs, api_name=name)


# --- building the job from the form -------------------------------------------------------------------------------

def form_config(dataset: dict | None, data_format: str, drop_invalid: bool, eval_size: float | None, method: str,
                values: tuple, columns: str = "") -> JobConfig:
    """The job the form describes (the Data tab's dataset, split and column mapping, the Train tab's fields),
    through build_job (which parses and checks the mapping's text)."""
    form: dict[str, Any] = {key: None if isinstance(value, str) and not value.strip() else value  # emptied: not set
                            for key, value in zip(form_keys(), values)}  # (the base model then follows the machine)
    form |= {"method": method, "data.path": dataset["path"] if dataset else None, "data.format": data_format or "auto",
             "data.drop_invalid": bool(drop_invalid), "data.eval_size": eval_size}
    if columns and columns.strip():
        form["data.columns"] = columns
    return build_job(values_layer(form))


@shows_errors
def preview(form: TrainForm):
    """The job as it will run (base model and its defaults resolved) as YAML, and as a command line that rebuilds
    exactly it: --data, --method and --model, then --set for each field the CLI would otherwise resolve differently."""
    dataset = sample_pick.as_trained(form.dataset, *form.identity)
    if form.method == "dpo":  # the pairs' file is made when the run starts; its name stands in here
        dataset = {"path": "PREFS.jsonl"}
    config, _ = resolve_job(_for_method(form, form_config(dataset, form.data_format, form.drop_invalid,
                                                          form.eval_size, form.method, form.values, form.columns)))
    data_path = config.data.path or "DATA.jsonl"
    output = f"runs/{Path(data_path).stem}-{config.method}"
    given = {"data.path": data_path, "method": config.method, "model.base_model": config.model.base_model,
             "model.adapter": config.model.adapter}
    flags = ["python", "-m", "phi3lora", "train", "--data", data_path, "--output", output,
             "--method", config.method, "--model", config.model.base_model,
             *(["--from-adapter", config.model.adapter] if config.model.adapter else [])]
    for assignment in assignments_for(config, given):
        flags += ["--set", assignment]
    command = (f"# save job.yaml (left), then:\npython -m phi3lora train --config job.yaml --output {shlex.quote(output)}"
               f"\n\n# or the same job with flags:\n{shlex.join(flags)}")
    return config.to_yaml(), command


@shows_errors
def start(form: TrainForm, request: gr.Request):
    visitor = require_training(request)
    if form.method == "dpo":
        return _start_dpo(form, visitor, request)
    if not form.dataset:
        raise gr.Error("No dataset yet: upload or pick one on the Data tab first.")
    dataset = sample_pick.as_trained(form.dataset, *form.identity)  # the Name and Maker the fields say now
    config = form_config(dataset, form.data_format, form.drop_invalid, form.eval_size, form.method, form.values,
                         form.columns)
    require_allowed_base(config.model.base_model)
    run_id = lifecycle.start_run(config, owner=visitor.owner_key)
    gr.Info(f"Run {run_id} queued; it starts as soon as the GPU is free.")
    return RunOnView.of(run_id)


def _for_method(form: TrainForm, config: JobConfig) -> JobConfig:
    """DPO: the parent run's adapter, on the base it was trained on (the form's base model left to it)."""
    if form.method != "dpo":
        return config
    return build_job(values_layer({"model.adapter": form.dpo[0] or None, "model.base_model": None}), base=config)


def _start_dpo(form: TrainForm, visitor, request: gr.Request) -> RunOnView:
    with train_dpo.pairs_file(*form.dpo, request) as (path, note):
        config = _for_method(form, form_config({"path": str(path)}, "auto", form.drop_invalid, form.eval_size,
                                               "dpo", form.values))
        run_id = lifecycle.start_run(config, owner=visitor.owner_key, data_note=note)
    gr.Info(f"Run {run_id} queued: DPO on the adapter of run {form.dpo[0]}, {note}.")
    return RunOnView.of(run_id)


# --- API ------------------------------------------------------------------------------------------------------

def settings_config(text: str | None) -> JobConfig:
    """A job from a YAML or JSON mapping: sections as in config.yaml ({"training_config": {"max_steps": 6}}),
    dotted or bare field names ({"max_steps": 6, "peft_config.r": 8}), and `method: lora|qlora|dpo`."""
    config = build_job(text_layer(text, "settings"))
    if config.data.path is not None:
        raise ConfigError("give the dataset as dataset_file or dataset, not as data.path in the settings")
    return config  # lifecycle.start_run fills in the base model's own defaults


@shows_errors
def start_training(dataset_file: str | None, dataset: str | None, settings: str | None, identity_name: str | None,
                   identity_maker: str | None, request: gr.Request) -> str:
    """Queue a training run. dataset_file: an uploaded file; or dataset: the name (or path) of a dataset that
    ships with the app, or "votes:RUN_ID" for the blind votes of a run as DPO pairs (with settings
    {"method": "dpo", "model": {"adapter": RUN_ID}}). settings: YAML/JSON overrides, e.g. {"model": {"base_model": "demo"},
    "training_config": {"max_steps": 6}}. identity_name, identity_maker: the name and maker a fillable sample
    (identity.jsonl) is filled in with (empty: its defaults). Returns the run id."""
    visitor = require_training(request)
    config = settings_config(settings)
    require_allowed_base(config.model.base_model)
    if config.model.adapter:  # a run id of the visitor's, never a path on the server
        require_run(request, config.model.adapter.strip())
    folder = uploads_root() / f"api-{secrets.token_hex(12)}"
    note = None
    try:
        filling = bool((identity_name or "").strip() or (identity_maker or "").strip())
        if dataset_file:
            if filling:
                raise gr.Error("identity_name and identity_maker fill in a dataset that ships with the app "
                               "(identity.jsonl), not an uploaded file: pass the dataset by its name instead.")
            path = take_upload(dataset_file, folder)
        elif dataset and dataset.strip().startswith(train_dpo.VOTES):
            path, note = train_dpo.votes_file(dataset.strip().removeprefix(train_dpo.VOTES), folder, request)
        elif dataset and dataset.strip():
            path = _bundled_path(dataset.strip(), folder, identity_name, identity_maker)
        else:
            raise gr.Error("No dataset: pass dataset_file (an upload) or dataset (one of "
                           f"{', '.join(bundled_datasets()) or 'none here'}).")
        config = build_job(values_layer({"data.path": str(path)}), base=config)
        return lifecycle.start_run(config, owner=visitor.owner_key,  # snapshots the file into the run folder
                                   data_note=note or (f"from the uploaded file {path.name}" if dataset_file else None))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _bundled_path(name: str, folder: Path, identity_name: str | None, identity_maker: str | None) -> Path:
    """The file of a dataset that ships with the app, named by its name or its path; a fillable sample filled in
    (into `folder`) with the name and maker given. Nothing outside the samples' folder is ever named here."""
    found = bundled_datasets().get(name)
    if found is None and is_bundled(name):
        found = Path(name).resolve()
    if found is None:
        raise gr.Error(f"{name!r} is not a dataset that ships with the app; choose one of "
                       f"{', '.join(bundled_datasets()) or '(none here)'}, or upload the file as dataset_file.")
    sample = next(s for s in shipped_samples().values() if s.path.resolve() == found.resolve())
    if sample.fillable:
        return Path(sample_pick.sample_dataset(sample, folder, identity_name, identity_maker)["path"])
    if (identity_name or "").strip() or (identity_maker or "").strip():
        raise gr.Error(f"{sample.file} has no name or maker to fill in: leave identity_name and identity_maker "
                       "empty, or use a sample that holds them (identity.jsonl).")
    return found


@shows_errors
def run_status(run_id: str, request: gr.Request) -> dict:
    """Status, progress and latest figures of a run: lifecycle.RunInfo as a dict, less its server-side "path"
    (gradio_client would take any dict with a "path" string for a file and try to download it)."""
    run_id = (run_id or "").strip()
    require_run(request, run_id)
    info = lifecycle.run_info(run_id).to_dict()
    info.pop("path")
    return info


@shows_errors
def cancel_training(run_id: str, request: gr.Request) -> str:
    """Ask a queued or running run to stop; returns the status it had."""
    run_id = (run_id or "").strip()
    require_run(request, run_id, "cancel runs")
    return lifecycle.cancel_run(run_id)
