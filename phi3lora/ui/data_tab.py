"""Data tab: choose a dataset (upload, bundled, or Hugging Face hub), see what phi3lora makes of it, and set
the eval split. The reading, checking and rendering are phi3lora.data's; this module only shows them."""
from __future__ import annotations

import logging
import secrets
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr
import pandas as pd

from .. import data
from ..policy.allowed_models import is_allowed
from ..config import DEFAULT_MAX_LENGTH, DataSettings
from ..errors import UserError, shorten
from ..base_model import ModelLoadError, choose_base_model
from . import sample_pick
from .common import (
    describe_size,
    forget_cached,
    hub_reachable,
    max_upload_bytes,
    max_upload_mb,
    session_folder,
    shows_errors,
    take_upload,
    uploads_root,
)
from .safe_text import no_remote_images
from .state import AppState, TokenizerCache, handler
from .visitors import policy, require_training

log = logging.getLogger(__name__)

PREVIEW_CONVERSATIONS = 50  # how many the preview picker offers
HISTOGRAM_BINS = 24
FITS, TRUNCATED = "fits", "over max length (truncated)"
MAX_HUB_ROWS = data.hub.MAX_ROWS
SHOWN_CHARS = 80  # a message quotes at most this much of what a visitor typed


@dataclass
class DataTab:
    dataset: gr.State  # {"path", "name", "source"} of the chosen dataset, or None
    data_format: gr.Dropdown
    columns: gr.Textbox  # "prompt=question,completion=answer": columns no known format names
    drop_invalid: gr.Checkbox
    eval_size: gr.Number
    upload: gr.File
    samples: sample_pick.SamplePicker  # the datasets that ship with the app
    hub_id: gr.Textbox
    hub_button: gr.Button
    summary: gr.Markdown
    problems: gr.Dataframe
    split: gr.Markdown
    histogram: gr.BarPlot
    preview_pick: gr.Dropdown
    chat: gr.Chatbot
    template: gr.Textbox
    analysis: gr.State  # {"lengths", "previews", "conversations"} of the last analysis


def build() -> DataTab:
    help_ = DataSettings.model_fields
    gr.Markdown("Pick a chat-instruction dataset: upload a file, use one that ships with the app, or load one "
                "from the Hugging Face hub. Formats: `messages`, `sharegpt`, `alpaca`, `prompt_completion`, and Phi-3 "
                "chat markup in a `text` column; other column names map with *Columns*.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            upload = gr.File(label=f"Upload a dataset (.jsonl, .json, .csv, .parquet; up to {describe_size(max_upload_mb())})",
                             file_types=list(data.SUPPORTED_EXTENSIONS), file_count="single", height=120)
            samples = sample_pick.build()
            with gr.Row():
                hub_id = gr.Textbox(label="…or a Hugging Face dataset id", placeholder="owner/name or owner/name:split",
                                    scale=3)
                hub_button = gr.Button("Load", scale=1, min_width=80)
            with gr.Row():
                data_format = gr.Dropdown(["auto", *data.FORMATS], value="auto", label="Format",
                                          info=help_["format"].description)
                eval_size = gr.Number(value=help_["eval_size"].default, label="Eval split",
                                      info=help_["eval_size"].description, minimum=0)
            columns = gr.Textbox(label="Columns (optional)", placeholder="prompt=question,completion=answer",
                                 info=help_["columns"].description, max_length=data.columns.MAX_MAPPING_CHARS)
            drop_invalid = gr.Checkbox(value=False, label="Skip invalid records", info=help_["drop_invalid"].description)
        with gr.Column(scale=2):
            summary = gr.Markdown("No dataset chosen yet.")
            split = gr.Markdown("")
            # Plots start as None: one that starts from an empty frame never draws later data (Gradio 6.31).
            histogram = gr.BarPlot(None, x="tokens", y="conversations", color="length",
                                   color_map={FITS: "#3b82f6", TRUNCATED: "#ef4444"},
                                   title="Tokens per conversation", x_title="tokens", y_title="conversations",
                                   x_label_angle=-45, height=260)
    problems = gr.Dataframe(headers=["record", "problem"], label="Problems (record numbers; line numbers in .jsonl)",
                            interactive=False, wrap=True, max_height=260, column_widths=["12%", "88%"])
    with gr.Row(equal_height=False):
        with gr.Column():
            preview_pick = gr.Dropdown([], label="Preview a conversation", interactive=True)
            chat = gr.Chatbot(label="As chat", height=360, feedback_options=None, buttons=["copy"])
        with gr.Column():
            template = gr.Textbox(label="Exactly what the model is trained on (Phi-3 chat template)", lines=16,
                                  max_lines=16, interactive=False, buttons=["copy"])
    return DataTab(gr.State(None), data_format, columns, drop_invalid, eval_size, upload, samples, hub_id, hub_button,
                   summary, problems, split, histogram, preview_pick, chat, template, gr.State(None))


def wire(tab: DataTab, state: AppState, upload_dir: gr.State, base_model: gr.Component,
         max_length: gr.Component) -> None:
    """Connect the tab; the tokenizer and the max-length cut come from the Train tab's settings."""
    private = {"api_visibility": "private"}
    analyse_ = handler(analyse, state.tokenizers)
    shown = [tab.summary, tab.problems, tab.histogram, tab.preview_pick, tab.chat, tab.template, tab.analysis, tab.split]
    analyse_inputs = [tab.dataset, tab.data_format, base_model, max_length, tab.eval_size, tab.columns]

    samples = tab.samples
    elsewhere = [tab.dataset, upload_dir, samples.choice, samples.identity]  # a dataset not from the list
    for event, fn, inputs, outputs in [
        (tab.upload.upload, use_upload, [tab.upload, upload_dir], [*elsewhere, tab.upload]),
        (samples.choice.input, sample_pick.use_sample, [samples.choice, samples.name, samples.maker, upload_dir],
         [tab.dataset, upload_dir, samples.identity]),
        (tab.hub_button.click, use_hub, [tab.hub_id, upload_dir], elsewhere),
        (tab.hub_id.submit, use_hub, [tab.hub_id, upload_dir], elsewhere),
        # One listener for both fields, so an edit made while the last one is still being analysed is run after
        # it (always_last) rather than beside it: two listeners raced, and the older preview could land last.
        (partial(gr.on, [e for field in (samples.name, samples.maker) for e in (field.submit, field.blur)],
                 trigger_mode="always_last"),
         sample_pick.refill, [tab.dataset, samples.name, samples.maker], [tab.dataset]),
    ]:
        event(fn, inputs, outputs, **private).success(analyse_, analyse_inputs, shown, trigger_mode="always_last",
                                                      **private)
    for event in (tab.data_format.input, tab.columns.submit, tab.columns.blur):
        event(analyse_, analyse_inputs, shown, **private)
    base_model.change(analyse_, analyse_inputs, shown, **private)
    max_length.change(rebin, [tab.analysis, max_length], [tab.histogram, tab.summary], show_progress="hidden",
                      **private)
    tab.eval_size.change(split_text, [tab.analysis, tab.eval_size], [tab.split], show_progress="hidden", **private)
    tab.preview_pick.input(handler(show_conversation, state.tokenizers), [tab.analysis, tab.preview_pick, base_model],
                           [tab.chat, tab.template], **private)


def add_api(state: AppState) -> None:
    """`/validate_dataset`: a file in, phi3lora.data.report() as JSON out (hidden components, API only)."""
    file_in = gr.File(label="file", visible=False, file_types=list(data.SUPPORTED_EXTENSIONS))
    report_out = gr.JSON(label="report", visible=False)
    trigger = gr.Button(visible=False)
    trigger.click(handler(validate_dataset, state.tokenizers), [file_in], [report_out], api_name="validate_dataset")


# --- choosing a dataset ----------------------------------------------------------------------------------------

@shows_errors
def use_upload(cached: str | None, folder: str | None, request: gr.Request):
    if not cached:
        raise gr.Error("No file arrived; upload it again.")
    refuse_upload_unless_allowed(request, cached)
    folder = session_folder(folder)
    path = take_upload(cached, folder)
    # The cached copy is gone, so the upload box is cleared; the summary names the dataset instead.
    return {"path": str(path), "name": path.name, "source": "uploaded"}, folder, None, gr.Group(visible=False), None


@shows_errors
def use_hub(dataset_id: str, folder: str | None, request: gr.Request, max_rows: int = MAX_HUB_ROWS):
    """Copy a hub dataset into this visitor's folder. data.hub makes sure the id reaches the hub only,
    never a folder or file on this server."""
    require_training(request, "load datasets")
    data.hub.parse_dataset_id(dataset_id)  # refuses anything that is not owner/name[:split]
    shown = shorten(dataset_id.strip(), as_repr=False)
    why_not = hub_reachable()
    if why_not:
        raise gr.Error(f"Cannot load {shown!r} from the Hugging Face hub: {why_not}. "
                       "Download the dataset yourself and upload the file instead.")
    folder = session_folder(folder)
    loaded = data.hub.fetch(dataset_id, folder, max_rows, max_upload_bytes())
    if loaded.truncated:
        gr.Warning(f"{loaded.name} is larger than this server takes ({max_rows} records, "
                   f"{describe_size(max_upload_mb())}): only its first {loaded.rows} records are used.")
    return ({"path": str(loaded.path), "name": f"{loaded.name} (hub)", "source": "Hugging Face hub"}, folder, None,
            gr.Group(visible=False))


def refuse_upload_unless_allowed(request: gr.Request, cached: str) -> None:
    """Uploads are for those who may train; anyone else's file is removed from Gradio's cache at once."""
    try:
        require_training(request, "upload datasets")
    except UserError:
        forget_cached(Path(cached))
        raise


# --- analysing it ----------------------------------------------------------------------------------------------

def tokenizer_for(tokenizers: TokenizerCache, base_model: str | None):
    """The base model's tokenizer (cached); the demo model's, with a warning, when it is not available here.
    With sign-in required, only the operator's allowed base models load: anyone can type a name here, and it
    must not make the server fetch from any repository or tell which folders exist. Empty is the default model."""
    name = choose_base_model(base_model or None).name_or_path
    if base_model and policy().login_required and not is_allowed(base_model):
        return _demo_tokenizer_instead(tokenizers, base_model)
    try:
        return tokenizers.get(name)
    except ModelLoadError as error:
        log.warning("Data tab: %s", error)  # the why (missing, unreadable, offline) is for the server log only
    return _demo_tokenizer_instead(tokenizers, base_model)


def _demo_tokenizer_instead(tokenizers: TokenizerCache, base_model: str | None):
    """The same words whatever the reason (not allowed, no such folder or repository, unreadable)."""
    shown = shorten(base_model or "the default base model", SHOWN_CHARS, as_repr=False)
    # Not the allow-list itself: it may hold the operator's folders.
    allowed = " This server analyses only the base models its operator allows." if policy().login_required else ""
    gr.Warning(f"Base model {shown!r} is not available for the analysis on this server, so token counts come from "
               f"the tokenizer of the demo model (same Phi-3 chat template, different counts).{allowed}")
    return tokenizers.get(choose_base_model("demo").name_or_path)


@shows_errors
def analyse(tokenizers: TokenizerCache, dataset: dict | None, fmt: str, base_model: str | None,
            max_length: float | None, eval_size: float | None, columns: str | None = None):
    if not dataset:
        return (gr.skip(),) * 8
    loaded = data.read_dataset(dataset["path"], fmt or "auto", columns=columns or None)
    tokenizer = tokenizer_for(tokenizers, base_model) if loaded.conversations else None
    cut = int(max_length or DEFAULT_MAX_LENGTH)
    lengths = data.token_lengths(tokenizer, loaded.conversations) if tokenizer else []
    report = named_not_placed(data.report(loaded, tokenizer, cut, lengths), dataset)
    previews = [(c.record, c.messages) for c in loaded.conversations[:PREVIEW_CONVERSATIONS]]
    analysis = {"lengths": lengths, "previews": previews, "conversations": len(loaded.conversations),
                "dataset": dataset, "report": report}
    if not loaded.conversations:
        gr.Warning(f"{dataset['name']} has no usable conversations: see the problems listed.")

    problems = pd.DataFrame([{"record": "file" if p["record"] is None else p["record"], "problem": p["message"]}
                             for p in report["errors"]], columns=["record", "problem"])
    choices = [(f"record {record}", i) for i, (record, _) in enumerate(previews)]
    chat, text = conversation_views(previews, 0, tokenizer) if previews else ([], "")
    return (summary_text(dataset, report, lengths, cut), problems, histogram(lengths, cut),
            gr.Dropdown(choices=choices, value=0 if choices else None), chat, text, analysis,
            split_text(analysis, eval_size))


def named_not_placed(report: dict, dataset: dict) -> dict:
    """The report with the dataset's name wherever a message gives its file's place on the server (a file that
    went missing, one that cannot be read): visitors see dataset names, never server paths."""
    path, name = str(dataset["path"]), str(dataset["name"])
    return {**report, "errors": [{**e, "message": e["message"].replace(path, name)} for e in report["errors"]],
            "warnings": [w.replace(path, name) for w in report["warnings"]]}


def summary_text(dataset: dict, report: dict, lengths: list[int], max_length: int) -> str:
    lines = [f"### {no_remote_images(dataset['name'])}",
             (f"{dataset['source']} · format **{report['format'] or 'unknown'}** · {report['records']} records · "
              f"**{report['conversations']}** usable conversations")]
    tokens = report.get("tokens")
    if tokens and tokens["count"]:
        over = sum(n > max_length for n in lengths)  # the max length may have changed since the report
        lines.append(f"Tokens per conversation: min {tokens['min']}, median {tokens['median']:g}, mean "
                     f"{tokens['mean']:g}, p95 {tokens['p95']}, max {tokens['max']}. "
                     + (f"**{over}** longer than max length {max_length} (truncated in training)."
                        if over else f"All fit within max length {max_length}."))
    for warning in report["warnings"]:
        lines.append(f"**Warning:** {warning}")
    lines += [f"*{note}*" for note in report.get("notes", [])]  # how the base model's template takes the data
    if report["ok"]:
        lines.append("**Usable.**")
    elif report["conversations"]:
        lines.append(f"**Not usable as it is: {len(report['errors'])} problem(s)**, listed below: fix them and upload "
                     f"again, or tick *Skip invalid records* to train on the {report['conversations']} good ones.")
    else:
        lines.append("**Not usable**: nothing in it can be trained on (see the problems below).")
    return "\n\n".join(lines)


def histogram(lengths: list[int], max_length: int) -> pd.DataFrame | None:
    """Binned token counts; the part of each bin over the max length gets its own colour."""
    if not lengths:
        return None
    top = max(lengths)
    width = _nice_width(top / HISTOGRAM_BINS)
    counts: dict[tuple[int, str], int] = {(b, FITS): 0 for b in range(top // width + 1)}  # empty bins show too
    for n in lengths:
        key = (n // width, TRUNCATED if n > max_length else FITS)
        counts[key] = counts.get(key, 0) + 1
    rows = [{"tokens": f"{b * width}–{(b + 1) * width - 1}", "conversations": c, "length": kind, "bin": b}
            for (b, kind), c in sorted(counts.items())]
    frame = pd.DataFrame(rows)
    # Nominal bins would be sorted as text ("100-119" before "20-39"): give the order explicitly.
    return gr.BarPlot(frame.drop(columns="bin"), sort=list(dict.fromkeys(frame["tokens"])))


def _nice_width(raw: float) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000):
        if step >= raw:
            return step
    return int(raw) + 1


@shows_errors
def rebin(analysis: dict | None, max_length: float | None):
    if not analysis or not analysis["lengths"]:
        return gr.skip(), gr.skip()
    cut = int(max_length or DEFAULT_MAX_LENGTH)
    return histogram(analysis["lengths"], cut), summary_text(analysis["dataset"], analysis["report"],
                                                             analysis["lengths"], cut)


def split_text(analysis: dict | None, eval_size: float | None) -> str:
    if not analysis or not analysis["conversations"]:
        return ""
    try:
        train, evaluation = data.split_train_eval(list(range(analysis["conversations"])), eval_size or 0, seed=0)
    except UserError as error:
        return f"**Eval split:** {error}"
    return f"Split: **{len(train)}** train / **{len(evaluation)}** eval conversations."


@shows_errors
def show_conversation(tokenizers: TokenizerCache, analysis: dict | None, index: int | None, base_model: str | None):
    if not analysis or index is None or index >= len(analysis["previews"]):
        return gr.skip(), gr.skip()
    return conversation_views(analysis["previews"], index, tokenizer_for(tokenizers, base_model))


def conversation_views(previews: list, index: int, tokenizer) -> tuple[list[dict], str]:
    messages = previews[index][1]
    bubbles = [{"role": m["role"], "content": no_remote_images(m["content"])} for m in messages]
    return bubbles, data.render_text(tokenizer, messages)


# --- API --------------------------------------------------------------------------------------------------------

@shows_errors
def validate_dataset(tokenizers: TokenizerCache, file: str | None, request: gr.Request) -> dict:
    """Check a dataset file: detected format, counts, every problem with its record number, token statistics
    (tokenizer of the default base model, max length config.DEFAULT_MAX_LENGTH). Raises when nothing in it can be trained on."""
    if not file:
        raise gr.Error("No file: pass the dataset file (e.g. gradio_client.handle_file('data.jsonl')).")
    refuse_upload_unless_allowed(request, file)
    folder = uploads_root() / f"api-{secrets.token_hex(12)}"
    try:
        path = take_upload(file, folder)
        loaded = data.read_dataset(path)
        tokenizer = tokenizer_for(tokenizers, None) if loaded.conversations else None
        report = named_not_placed(data.report(loaded, tokenizer), {"path": path, "name": path.name})
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # an API caller has no session to keep the file for
    # "file", not "path": the name only (where the server keeps files is its own business), and gradio_client
    # would take any dict with a "path" string for a file to download.
    report = {"file": path.name, **{k: v for k, v in report.items() if k != "path"}}
    if not loaded.conversations:
        problems = "; ".join(f"record {e['record']}: {e['message']}" if e["record"] else e["message"]
                             for e in report["errors"][:10])
        raise gr.Error(f"{path.name} has no usable conversations: {problems}")
    return report
