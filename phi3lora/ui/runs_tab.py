"""Runs tab: every run in a table, the config diff of two runs, their loss curves overlaid, the adapter as a
zip, and deleting a run (after a confirmation); the Hub push section is ui/runs_push.py."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
import yaml

from .. import settings
from ..policy import access
from ..deploy import export, onnx_verify
from ..runs import lifecycle
from ..runs import registry
from ..runs.lineage import describe as describe_lineage
from ..inference import votes
from ..policy.access import AccessDenied
from ..tasks import machine
from .visitors import policy, require_run, visitor_of
from .common import download_path, duration, method_name, number, shows_errors, timestamp
from .downloads import offer
from . import runs_push
from .train_progress import kept_marker

ONNX_TARGETS = [("int4, CPU", "int4 cpu"), ("fp32, CPU", "fp32 cpu"), ("int4, CUDA", "int4 cuda"),
                ("fp16, CUDA", "fp16 cuda")]
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "config.yaml")
COLUMNS = ["run", "status", "method", "dataset", "base model", "started", "duration", "train loss", "eval loss", "blind win rate",
           "note"]


@dataclass
class RunsTab:
    refresh_button: gr.Button
    table: gr.Dataframe
    compare: gr.Dropdown  # several runs: curves overlaid
    curves: gr.LinePlot
    diff_a: gr.Dropdown
    diff_b: gr.Dropdown
    diff: gr.Dataframe
    selected: gr.Dropdown  # one run: download, delete, export
    zip_button: gr.Button
    zip_file: gr.HTML  # the adapter zip's download link (downloads.py), once asked for
    export_button: gr.Button
    exports: gr.Markdown
    export_timer: gr.Timer  # polls while an export of the selected run is running
    delete_button: gr.Button
    confirm_row: gr.Row
    confirm_text: gr.Markdown
    confirm_button: gr.Button
    keep_button: gr.Button
    publish_button: gr.Button
    onnx_button: gr.Button  # an export for ONNX Runtime GenAI, checked against torch (deploy/onnx_export.py)
    onnx_target: gr.Dropdown  # its precision and device, "int4 cpu"
    push: runs_push.PushSection | None = None  # the Hub push section (ui/runs_push.py)

    @property
    def run_pickers(self) -> list[gr.Dropdown]:
        return [self.compare, self.diff_a, self.diff_b, self.selected]


def build() -> RunsTab:
    with gr.Row():
        gr.Markdown("Every training run on this server, newest first.")
        refresh_button = gr.Button("Refresh", size="sm", scale=0, min_width=100)
    table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), interactive=False, wrap=True, max_height=320,
                         column_widths=["15%", "8%", "6%", "11%", "9%", "11%", "6%", "7%", "7%", "8%", "12%"])
    with gr.Row(equal_height=False):
        with gr.Column():
            compare = gr.Dropdown([], multiselect=True, label="Overlay the loss curves of")
            curves = gr.LinePlot(None, x="step", y="loss", color="curve", title="Loss", height=300)
        with gr.Column():
            with gr.Row():
                diff_a = gr.Dropdown([], label="Config of run A")
                diff_b = gr.Dropdown([], label="…against run B")
            diff = gr.Dataframe(pd.DataFrame(columns=["setting", "A", "B"]), label="Settings that differ",
                                interactive=False, wrap=True, max_height=300)
    with gr.Group():
        with gr.Row(equal_height=True):
            selected = gr.Dropdown([], label="Run", scale=2)
            zip_button = gr.Button("Download adapter (.zip)", scale=1)
            export_button = gr.Button("Export merged model", scale=1)
            delete_button = gr.Button("Delete run…", variant="stop", scale=1)
            # Only where visitors who may not train may chat with published adapters ($PHI3LORA_PUBLIC_CHAT).
            publish_button = gr.Button("Publish for visitors' chat", scale=1, visible=policy().public_chat)
        with gr.Row(equal_height=True):
            onnx_target = gr.Dropdown(ONNX_TARGETS, value=ONNX_TARGETS[0][1], label="ONNX precision", scale=1)
            onnx_button = gr.Button("Export for ONNX Runtime", scale=1)
        zip_file = gr.HTML(visible=False, elem_id="adapter-zip-link", padding=True)
        exports = gr.Markdown("", padding=True)
        with gr.Row(visible=False) as confirm_row:
            confirm_text = gr.Markdown()
            confirm_button = gr.Button("Yes, delete it", variant="stop", scale=0, min_width=170)
            keep_button = gr.Button("Keep it", scale=0, min_width=100)
    push = runs_push.build()
    return RunsTab(refresh_button, table, compare, curves, diff_a, diff_b, diff, selected, zip_button, zip_file,
                   export_button, exports, gr.Timer(3.0, active=False), delete_button, confirm_row, confirm_text,
                   confirm_button, keep_button, publish_button, onnx_button, onnx_target, push=push)


def wire(tab: RunsTab, tab_item: gr.Tab, demo: gr.Blocks) -> None:
    private = {"api_visibility": "private"}
    listing = [tab.table, *tab.run_pickers]
    for event in (tab.refresh_button.click, tab_item.select, demo.load):
        event(refresh, [tab.compare, tab.diff_a, tab.diff_b, tab.selected], listing, **private)
    tab.compare.change(overlay, [tab.compare], [tab.curves], **private)
    for picker in (tab.diff_a, tab.diff_b):
        picker.change(config_diff, [tab.diff_a, tab.diff_b], [tab.diff], **private)
    tab.zip_button.click(adapter_zip, [tab.selected], [tab.zip_file], **private)
    tab.selected.change(lambda: gr.HTML(value="", visible=False), None, [tab.zip_file], **private)
    exports_view = [tab.exports, tab.export_timer]
    tab.selected.change(show_exports, [tab.selected], exports_view, **private)
    tab.export_timer.tick(show_exports, [tab.selected], exports_view, show_progress="hidden", **private)
    tab.export_button.click(start_export, [tab.selected], None, **private).success(
        show_exports, [tab.selected], exports_view, **private)
    tab.onnx_button.click(start_onnx_export, [tab.selected, tab.onnx_target], None, **private).success(
        show_exports, [tab.selected], exports_view, **private)
    tab.publish_button.click(publish, [tab.selected], None, **private)
    tab.delete_button.click(ask_delete, [tab.selected], [tab.confirm_row, tab.confirm_text], **private)
    tab.keep_button.click(lambda: gr.Row(visible=False), None, [tab.confirm_row], **private)
    tab.confirm_button.click(delete, [tab.selected], [tab.confirm_row], **private).success(
        refresh, [tab.compare, tab.diff_a, tab.diff_b, tab.selected], listing, **private)
    if tab.push is not None:
        runs_push.wire(tab.push, tab.selected)


# --- the table ------------------------------------------------------------------------------------------------

@shows_errors
def refresh(compare: list | None, diff_a: str | None, diff_b: str | None, selected: str | None,
            request: gr.Request):
    visitor, rules = visitor_of(request), policy()
    infos = [info for info in lifecycle.list_runs() if rules.owns(visitor, info.id)]
    ids = [info.id for info in infos]
    rows = [[info.id, info.status, info.method, info.dataset, info.base_model, timestamp(info.created_at),
             duration(info.elapsed) if info.max_steps else "-", number(info.train_loss), number(info.eval_loss),
             _win_rate(info.id), _note(info)] for info in infos]

    def keep(value):
        return value if value in ids else None

    return (pd.DataFrame(rows, columns=COLUMNS),
            gr.Dropdown(choices=ids, value=[r for r in (compare or []) if r in ids]),
            gr.Dropdown(choices=ids, value=keep(diff_a)), gr.Dropdown(choices=ids, value=keep(diff_b)),
            gr.Dropdown(choices=ids, value=keep(selected) or (ids[0] if ids else None)))


def _note(info: lifecycle.RunInfo) -> str:
    """Why it ended as it did, and a DPO run's lineage (its parent run and the pairs it trained on)."""
    return "; ".join(text for text in (describe_lineage(info.lineage), info.reason) if text)


def _win_rate(run_id: str) -> str:
    tally = votes.win_rate(run_id)
    return "-" if not tally.votes else f"{tally.rate:.0%} of {tally.votes}"


# --- curves and diff ---------------------------------------------------------------------------------------------

@shows_errors
def overlay(run_ids: list | None, request: gr.Request):
    for run_id in run_ids or []:
        require_run(request, run_id)
    return _curves(run_ids or [])


def _curves(run_ids: list[str]) -> pd.DataFrame | None:
    rows = []
    for run_id in run_ids:
        progress = registry.Progress()
        for event in registry.MetricsReader(registry.run_dir(run_id) / "metrics.jsonl").update():
            progress.add(event)
        curves = [{"step": s, "loss": v, "curve": f"{run_id} train"} for s, v in progress.train_curve]
        curves += [{"step": s, "loss": v, "curve": f"{run_id} eval"} for s, v in progress.eval_curve]
        rows += curves + kept_marker(curves, progress.best_step, "curve", f"{run_id} kept: step {{step}}")
    return pd.DataFrame(rows, columns=["step", "loss", "curve"]) if rows else None  # None: see data_tab.build


@shows_errors
def config_diff(run_a: str | None, run_b: str | None, request: gr.Request):
    if not run_a or not run_b:
        return pd.DataFrame(columns=["setting", "A", "B"])
    require_run(request, run_a)
    require_run(request, run_b)
    a, b = _flat_config(run_a), _flat_config(run_b)
    rows = [[key, _show(a.get(key)), _show(b.get(key))] for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]
    if not rows:
        gr.Info("The two runs have the same settings.")
    return pd.DataFrame(rows, columns=["setting", "A", "B"])


def _flat_config(run_id: str) -> dict:
    values = yaml.safe_load((registry.run_dir(run_id) / "config.yaml").read_text(encoding="utf-8")) or {}
    return {f"{section}.{name}": value for section, fields in values.items() if isinstance(fields, dict)
            for name, value in fields.items()}


def _show(value) -> str:
    return "(unset)" if value is None else str(value)


# --- download and delete -------------------------------------------------------------------------------------------

@shows_errors
def adapter_zip(run_id: str | None, request: gr.Request):
    require_run(request, run_id)
    info = lifecycle.run_info(run_id)
    folder = Path(info.path)
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing or info.status not in machine.FINISHED:
        raise gr.Error(f"Run {run_id} has no adapter to download yet ({info.status}"
                       + (f"; missing {', '.join(missing)}" if missing else "") + ").")
    target = download_path(f"phi3lora-{run_id}-adapter.zip")
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in ADAPTER_FILES:
            archive.write(folder / name, name)
        archive.writestr("README.md", _readme(info))
    return offer(target, run_id)


def _readme(info: lifecycle.RunInfo) -> str:
    base = "path/to/phi3lora/demo_model" if info.base_model == "demo" else info.base_model
    note = (" It was trained on phi3lora's embedded demo model, so load it on that model (phi3lora/demo_model)."
            if info.base_model == "demo" else "")
    return f"""# LoRA adapter from phi3lora run {info.id}

{method_name(info.method)} adapter for `{info.base_model}`, trained on `{info.dataset}` (status: {info.status};
final train loss {number(info.train_loss)}, eval loss {number(info.eval_loss)}).{note}

- `adapter_config.json`, `adapter_model.safetensors`: the adapter, standard PEFT layout (LoRA weights only)
- `config.yaml`: the full job; `python -m phi3lora train --config config.yaml --data DATA --output DIR` reruns it

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "path/to/this/folder")
```
"""


# --- export of a merged model (a background task: phi3lora.deploy.export) -----------------------------------------

@shows_errors
def start_export(run_id: str | None, request: gr.Request):
    require_run(request, run_id, "export models")
    number = export.start_export(run_id)
    gr.Info(f"Export {number} of run {run_id} started in the background: merging loads the whole base model, "
            "so it can take minutes.")


@shows_errors
def show_exports(run_id: str | None, request: gr.Request):
    try:
        if run_id:
            require_run(request, run_id)
        infos = export.export_status(run_id) if run_id else []
    except registry.RunNotFound:
        infos = []
    lines = []
    for info in infos:
        line = f"- export {info['export']}: **{info['status']}**"
        if info["reason"]:
            line += f" ({info['reason']})"
        if info["path"]:
            where = Path(info["path"])  # shown from the data root on: where that is, is the server's business
            where = where.relative_to(settings.data_root()).as_posix() if where.is_relative_to(settings.data_root()) else where.name
            line += (f": ONNX Runtime GenAI model ({info['precision']}) in `{where}` of the data root"
                     if info.get("format") == "onnx" else
                     f": merged model in `{where}` of the data root (loads with transformers, no peft needed)")
        if info.get("verify"):
            line += f"; {onnx_verify.summary(info['verify'])}"
        lines.append(line)
    running = any(info["status"] in machine.ACTIVE for info in infos)
    return ("**Exports of this run**\n" + "\n".join(lines) if lines else ""), gr.Timer(active=running)


@shows_errors
def start_onnx_export(run_id: str | None, target: str | None, request: gr.Request):
    require_run(request, run_id, "export models")
    if target not in {value for _, value in ONNX_TARGETS}:
        raise gr.Error(f"Choose the ONNX precision: one of {', '.join(label for label, _ in ONNX_TARGETS)}.")
    precision, device = target.split()
    number = export.start_export(run_id, format="onnx", precision=precision, device=device, verify=True)
    gr.Info(f"ONNX export {number} of run {run_id} started in the background: it merges the adapter, converts the "
            "model, then answers a few prompts with the export and with torch to compare them.")


@shows_errors
def publish(run_id: str | None, request: gr.Request):
    visitor = require_run(request, run_id, "publish adapters")
    if not policy().is_owner(visitor):
        raise AccessDenied("Only the owner of this Space publishes adapters.")
    access.publish(run_id)
    gr.Info(f"Visitors may now chat with the adapter of run {run_id}.")


@shows_errors
def ask_delete(run_id: str | None, request: gr.Request):
    require_run(request, run_id, "delete runs")
    info = lifecycle.run_info(run_id)
    if info.status in machine.ACTIVE:
        raise gr.Error(f"Run {run_id} is {info.status}: cancel it on the Train tab first.")
    return gr.Row(visible=True), (f"Delete run **{run_id}** ({info.status}, {info.dataset}) with its adapter and "
                                  "checkpoints? This cannot be undone.")


@shows_errors
def delete(run_id: str | None, request: gr.Request):
    require_run(request, run_id, "delete runs")
    lifecycle.delete_run(run_id)
    gr.Info(f"Run {run_id} deleted.")
    return gr.Row(visible=False)
