"""Train tab: the job form (built from the typed config), its YAML / CLI equivalent, and the live view of a
run: progress, loss curves, speed, log, cancel and resume. Runs are phi3lora.jobs' background processes, so
this page can be reloaded, or the app restarted, and it finds the run again."""
from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import gradio as gr
import pandas as pd

from .. import jobs, runs
from ..config import (PHI3_EMBEDDING_MODULE, PHI3_LINEAR_MODULES, SECTIONS, ConfigError, JobConfig, field_help,
                      load_yaml, shorten)
from ..modeling import DEFAULT_GPU_MODEL, DEMO_TRAINING_DEFAULTS, choose_base_model
from .visitors import policy, require_allowed_base, require_run, require_training, visitor_of
from .common import bundled_datasets, method_name, duration, is_bundled, number, shows_errors, take_upload, uploads_root

POLL_SECONDS = 2.0
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# In view; every other model / training_config / peft_config field goes into the Advanced accordion.
MAIN_FIELDS = ("model.base_model", "training_config.num_train_epochs", "training_config.learning_rate",
               "peft_config.r", "peft_config.lora_alpha", "training_config.max_length")
FORM_SECTIONS = ("model", "training_config", "peft_config")  # `data` is set on the Data tab
NOT_IN_FORM = ("model.load_in_4bit",)  # the LoRA / QLoRA choice sets it
TARGET_CHOICES = [*PHI3_LINEAR_MODULES, PHI3_EMBEDDING_MODULE, "lm_head", "all-linear"]
BASE_MODEL_CHOICES = ["demo", DEFAULT_GPU_MODEL, "microsoft/Phi-3-mini-128k-instruct"]
ACTIVE, RESUMABLE = (runs.QUEUED, runs.RUNNING), (runs.FAILED, runs.CANCELLED, runs.INTERRUPTED)


@dataclass
class TrainTab:
    method: gr.Radio
    fields: dict[str, gr.Component]  # "section.field" -> its input, in form order
    preview_button: gr.Button
    yaml_view: gr.Code
    cli_view: gr.Code
    start_button: gr.Button
    header: gr.Markdown
    progress: gr.HTML
    losses: gr.LinePlot
    figures: gr.Markdown
    log: gr.Textbox
    cancel_button: gr.Button
    resume_button: gr.Button
    timer: gr.Timer
    watcher: gr.State  # jobs.RunWatcher of the run on view (per visitor), or None

    @property
    def base_model(self) -> gr.Component:
        return self.fields["model.base_model"]

    @property
    def max_length(self) -> gr.Component:
        return self.fields["training_config.max_length"]

    @property
    def run_view(self) -> list[gr.Component]:
        """What tick() fills in, in its order."""
        return [self.header, self.progress, self.losses, self.figures, self.log, self.cancel_button,
                self.resume_button, self.timer]


# --- the form, from the config's own fields -----------------------------------------------------------------------

def form_keys() -> list[str]:
    keys = [f"{section}.{name}" for section in FORM_SECTIONS
            for name in JobConfig.model_fields[section].annotation.model_fields]
    return [k for k in keys if k not in NOT_IN_FORM]


def field_info(key: str):
    section, name = key.split(".")
    return JobConfig.model_fields[section].annotation.model_fields[name]


def default_base_model() -> str:
    choice = choose_base_model(None)
    return "demo" if choice.is_demo else choice.name_or_path


def model_defaults(base_model: str | None) -> dict[str, Any]:
    """The training defaults that differ by base model (the demo model has its own); shown in the form, so
    what the form says is what runs."""
    demo = choose_base_model(base_model or None).is_demo
    return {f"training_config.{k}": (v if demo else field_info(f"training_config.{k}").default)
            for k, v in DEMO_TRAINING_DEFAULTS.items()}


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
        method = gr.Radio([("LoRA", "lora"), ("QLoRA (4-bit base)", "qlora")], value="lora", label="Method",
                          info=field_help()["model.load_in_4bit"], scale=1)
        fields["model.base_model"] = field_component("model.base_model", base)
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
    start_button = gr.Button("Start training", variant="primary")

    header = gr.Markdown("No run in progress.")
    progress = gr.HTML("")
    with gr.Row(equal_height=False):
        losses = gr.LinePlot(None, x="step", y="loss", color="split", title="Loss",
                             color_map={"train": "#3b82f6", "eval": "#f97316"}, height=300, scale=2)
        with gr.Column(scale=1):
            figures = gr.Markdown("")
            with gr.Row():
                cancel_button = gr.Button("Cancel", variant="stop", interactive=False)
                resume_button = gr.Button("Resume", interactive=False)
    log = gr.Textbox(label="Log (tail)", lines=8, max_lines=8, interactive=False, autoscroll=True)
    return TrainTab(method, fields, preview_button, yaml_view, cli_view, start_button, header, progress, losses,
                    figures, log, cancel_button, resume_button, gr.Timer(POLL_SECONDS, active=False), gr.State(None))


def wire(tab: TrainTab, dataset: gr.State, data_format, drop_invalid, eval_size) -> None:
    private = {"api_visibility": "private"}
    form = [dataset, data_format, drop_invalid, eval_size, tab.method, *tab.fields.values()]
    view = tab.run_view
    model_fields = [tab.fields[k] for k in model_defaults(None)]
    tab.base_model.input(follow_model_defaults, [tab.base_model, *model_fields], model_fields, **private)
    tab.preview_button.click(preview, form, [tab.yaml_view, tab.cli_view], **private)
    tab.start_button.click(start, form, [tab.watcher], **private).success(tick, [tab.watcher], view, **private)
    tab.timer.tick(tick, [tab.watcher], view, show_progress="hidden", **private)
    tab.cancel_button.click(cancel, [tab.watcher], None, **private).success(tick, [tab.watcher], view, **private)
    tab.resume_button.click(resume, [tab.watcher], None, **private).success(tick, [tab.watcher], view, **private)


def on_load(tab: TrainTab, demo: gr.Blocks) -> None:
    """Reattach after a reload or a restart: watch the newest queued or running run, curves from its metrics."""
    demo.load(reattach, None, [tab.watcher], api_visibility="private").success(
        tick, [tab.watcher], tab.run_view, api_visibility="private")


def add_api() -> None:
    """`/start_training`, `/run_status`, `/cancel_training` (hidden components, API only)."""
    dataset_file = gr.File(label="dataset_file", visible=False)
    dataset_name = gr.Textbox(label="dataset", visible=False)
    settings = gr.Textbox(label="settings", visible=False)
    run_id_in, run_id_out = gr.Textbox(label="run_id", visible=False), gr.Textbox(label="run_id", visible=False)
    status_out, cancel_out = gr.JSON(label="run", visible=False), gr.Textbox(label="status", visible=False)
    for name, fn, inputs, outputs in [
        ("start_training", start_training, [dataset_file, dataset_name, settings], [run_id_out]),
        ("run_status", run_status, [run_id_in], [status_out]),
        ("cancel_training", cancel_training, [run_id_in], [cancel_out]),
    ]:
        gr.Button(visible=False).click(fn, inputs, outputs, api_name=name)


# --- building the job from the form -------------------------------------------------------------------------------

def form_config(dataset: dict | None, data_format: str, drop_invalid: bool, eval_size: float | None, method: str,
                values: tuple) -> JobConfig:
    nested: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for key, value in zip(form_keys(), values):
        section, name = key.split(".")
        if isinstance(value, str) and not value.strip():
            value = None  # an emptied box means "not set" (the base model then follows the machine)
        nested[section][name] = value
    nested["model"]["load_in_4bit"] = method == "qlora"
    nested["data"] = {"path": dataset["path"] if dataset else None, "format": data_format or "auto",
                      "drop_invalid": bool(drop_invalid), "eval_size": eval_size}
    return JobConfig.from_dict(nested)


@shows_errors
def preview(dataset, data_format, drop_invalid, eval_size, method, *values):
    config = form_config(dataset, data_format, drop_invalid, eval_size, method, values)
    data_path = config.data.path or "DATA.jsonl"
    output = f"runs/{Path(data_path).stem}-{config.method}"
    flags = ["python", "-m", "phi3lora", "train", "--data", data_path, "--output", output,
             "--method", config.method, "--model", config.model.base_model or "demo"]
    for key in cli_settings(config):
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        flags += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    command = (f"# save job.yaml (left), then:\npython -m phi3lora train --config job.yaml --output {shlex.quote(output)}"
               f"\n\n# or the same job with flags:\n{shlex.join(flags)}")
    return config.to_yaml(), command


def cli_settings(config: JobConfig) -> list[str]:
    """Fields to pass with --set so the CLI runs exactly this job: those that differ from the defaults, and the
    demo model's own defaults (the CLI would otherwise fill in its own values for those)."""
    defaults = JobConfig()
    keys = []
    for section in SECTIONS:
        for name in JobConfig.model_fields[section].annotation.model_fields:
            key = f"{section}.{name}"
            if key in ("data.path", "model.base_model", "model.load_in_4bit"):
                continue  # --data, --model, --method
            differs = getattr(getattr(config, section), name) != getattr(getattr(defaults, section), name)
            if differs or key in model_defaults(config.model.base_model):
                keys.append(key)
    return keys


@shows_errors
def start(dataset, data_format, drop_invalid, eval_size, method, request: gr.Request, *values):
    visitor = require_training(request)
    if not dataset:
        raise gr.Error("No dataset yet: upload or pick one on the Data tab first.")
    config = form_config(dataset, data_format, drop_invalid, eval_size, method, values)
    require_allowed_base(config.model.base_model)
    run_id = jobs.start_run(config, owner=visitor.owner_key)
    gr.Info(f"Run {run_id} queued; it starts as soon as the GPU is free.")
    return jobs.RunWatcher(run_id)


# --- watching a run -------------------------------------------------------------------------------------------

@shows_errors
def reattach(request: gr.Request):
    """The visitor's newest queued or running run (their own; the owner's: any)."""
    visitor, rules = visitor_of(request), policy()
    for info in jobs.list_runs():  # newest first
        if info.status in ACTIVE and rules.owns(visitor, info.id):
            return jobs.RunWatcher(info.id)
    return None


@shows_errors
def tick(watcher: jobs.RunWatcher | None):
    if watcher is None:
        return ("No run in progress: start one above, or look at earlier runs in the Runs tab.", "",
                None, "", "", gr.Button(interactive=False), gr.Button(interactive=False),
                gr.Timer(active=False))
    try:
        info = watcher.info()
    except runs.RunNotFound:
        return (f"Run {watcher.run_id} no longer exists (deleted).", "", None, "", "",
                gr.Button(interactive=False), gr.Button(interactive=False), gr.Timer(active=False))
    progress = watcher.progress
    points = (len(progress.train_curve), len(progress.eval_curve), progress.step)
    curves = gr.skip()
    if getattr(watcher, "shown_points", None) != points:  # send the curves only when they changed
        watcher.shown_points = points
        curves = _curves_frame(progress.train_curve, progress.eval_curve)
    return (_header(info), _progress_bar(info), curves, _figures(info), _plain(jobs.log_tail(info.id, 3000)),
            gr.Button(interactive=info.status in ACTIVE), gr.Button(interactive=info.status in RESUMABLE),
            gr.Timer(active=info.status in ACTIVE))


def _plain(log: str) -> str:
    """The log without terminal control sequences (progress bars move the cursor with them)."""
    return ANSI_ESCAPE.sub("", log)


def _curves_frame(train: list, evaluation: list) -> pd.DataFrame | None:
    rows = [{"step": s, "loss": v, "split": "train"} for s, v in train]
    rows += [{"step": s, "loss": v, "split": "eval"} for s, v in evaluation]
    return pd.DataFrame(rows, columns=["step", "loss", "split"]) if rows else None  # None: see data_tab.build


def _header(info: jobs.RunInfo) -> str:
    what = {
        runs.QUEUED: "waiting in the queue for a free GPU slot",
        runs.RUNNING: "training",
        runs.COMPLETED: "completed: the adapter is saved; download it or compare runs in the Runs tab",
        runs.FAILED: f"failed: {info.reason}",
        runs.CANCELLED: f"cancelled: {info.reason}",
        runs.INTERRUPTED: f"interrupted: {info.reason}",
    }.get(info.status, info.status)
    if info.status in RESUMABLE:
        what += " (Resume continues from the newest checkpoint)"
    return (f"### Run `{info.id}` · {info.status}\n{method_name(info.method)} on **{info.dataset}**, base "
            f"`{info.base_model}` · {what}")


def _progress_bar(info: jobs.RunInfo) -> str:
    if not info.max_steps:
        return "<p>Preparing (loading the model and the data)…</p>" if info.status in ACTIVE else ""
    eta = f" · ETA {duration(info.eta_seconds)}" if info.eta_seconds is not None else ""
    return (f"<progress value='{info.step}' max='{info.max_steps}' style='width:100%;height:1.1em'></progress>"
            f"<p>Step {info.step} / {info.max_steps} · epoch {info.epoch:.2f} · elapsed "
            f"{duration(info.elapsed)}{eta}</p>")


def _figures(info: jobs.RunInfo) -> str:
    memory = f"{info.peak_gpu_memory_gb:.2f} GB" if info.peak_gpu_memory_gb is not None else "- (no GPU)"
    speed = f"{info.tokens_per_second:,.0f}" if info.tokens_per_second is not None else "-"
    return ("| figure | latest |\n|---|---|\n"
            f"| train loss | {number(info.train_loss)} |\n| eval loss | {number(info.eval_loss)} |\n"
            f"| learning rate | {number(info.learning_rate, 3)} |\n| tokens / s | {speed} |\n"
            f"| peak GPU memory | {memory} |")


@shows_errors
def cancel(watcher: jobs.RunWatcher | None, request: gr.Request):
    if watcher is None:
        raise gr.Error("No run on view to cancel.")
    require_run(request, watcher.run_id, "cancel runs")
    jobs.cancel_run(watcher.run_id)
    gr.Info("Cancel requested: training stops at its next step and keeps the adapter as it stands.")


@shows_errors
def resume(watcher: jobs.RunWatcher | None, request: gr.Request):
    if watcher is None:
        raise gr.Error("No run on view to resume.")
    require_run(request, watcher.run_id, "resume runs")
    jobs.resume_run(watcher.run_id)
    gr.Info(f"Run {watcher.run_id} queued again; it continues from its newest checkpoint.")


# --- API ------------------------------------------------------------------------------------------------------

def settings_config(text: str | None) -> JobConfig:
    """A job from a YAML or JSON mapping: sections as in config.yaml ({"training_config": {"max_steps": 6}}),
    dotted or bare field names ({"max_steps": 6, "peft_config.r": 8}), and `method: lora|qlora`."""
    values = load_yaml(text, "settings") if text and text.strip() else {}
    if not isinstance(values, dict):
        raise ConfigError("settings must be a mapping, e.g. {\"training_config\": {\"max_steps\": 6}}")
    assignments = []
    for key, value in values.items():
        if key == "method":
            if value not in ("lora", "qlora"):
                raise ConfigError(f"method must be lora or qlora (got {shorten(value)})")
            assignments.append(f"model.load_in_4bit={'true' if value == 'qlora' else 'false'}")
        elif key in SECTIONS and isinstance(value, dict):
            assignments += [f"{key}.{name}={json.dumps(v)}" for name, v in value.items()]
        else:
            assignments.append(f"{key}={json.dumps(value)}")
    config = JobConfig().with_overrides(assignments)
    if config.data.path is not None:
        raise ConfigError("give the dataset as dataset_file or dataset, not as data.path in the settings")
    return config  # jobs.start_run fills in the base model's own defaults


@shows_errors
def start_training(dataset_file: str | None, dataset: str | None, settings: str | None, request: gr.Request) -> str:
    """Queue a training run. dataset_file: an uploaded file; or dataset: the name (or path) of a dataset that
    ships with the app. settings: YAML/JSON overrides, e.g. {"model": {"base_model": "demo"},
    "training_config": {"max_steps": 6}}. Returns the run id."""
    visitor = require_training(request)
    config = settings_config(settings)
    require_allowed_base(config.model.base_model)
    folder = uploads_root() / f"api-{secrets.token_hex(12)}"
    try:
        if dataset_file:
            path = take_upload(dataset_file, folder)
        elif dataset and dataset.strip():
            path = _bundled_path(dataset.strip())
        else:
            raise gr.Error("No dataset: pass dataset_file (an upload) or dataset (one of "
                           f"{', '.join(bundled_datasets()) or 'none here'}).")
        config = config.with_overrides([f"data.path={json.dumps(str(path))}"])
        return jobs.start_run(config, owner=visitor.owner_key)  # snapshots the file into the run folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _bundled_path(name: str) -> Path:
    found = bundled_datasets().get(name)
    if found is None and is_bundled(name):
        found = Path(name)
    if found is None:
        raise gr.Error(f"{name!r} is not a dataset that ships with the app; choose one of "
                       f"{', '.join(bundled_datasets()) or '(none here)'}, or upload the file as dataset_file.")
    return found


@shows_errors
def run_status(run_id: str, request: gr.Request) -> dict:
    """Status, progress and latest figures of a run: jobs.RunInfo as a dict, less its server-side "path"
    (gradio_client would take any dict with a "path" string for a file and try to download it)."""
    run_id = (run_id or "").strip()
    require_run(request, run_id)
    info = jobs.run_info(run_id).to_dict()
    info.pop("path")
    return info


@shows_errors
def cancel_training(run_id: str, request: gr.Request) -> str:
    """Ask a queued or running run to stop; returns the status it had."""
    run_id = (run_id or "").strip()
    require_run(request, run_id, "cancel runs")
    return jobs.cancel_run(run_id)
