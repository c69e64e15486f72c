"""Train tab, the live view of a run: progress, loss curves, speed, log, cancel and resume. Runs are background
tasks (phi3lora.runs.lifecycle), so this page can be reloaded, or the app restarted, and it finds the run again."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import gradio as gr
import pandas as pd

from ..runs import lifecycle
from ..runs import registry
from ..tasks import machine
from .common import duration, method_name, number, shows_errors
from .visitors import policy, require_run, visitor_of

POLL_SECONDS = 2.0
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ACTIVE, RESUMABLE = machine.ACTIVE, (machine.FAILED, machine.CANCELLED, machine.INTERRUPTED)
KEPT = "kept (best eval)"  # early stopping's chosen step, a series of its own on the loss plot


@dataclass
class RunOnView:
    """The run a visitor's Train tab follows (kept in their gr.State), and what of it the page shows already."""
    watcher: lifecycle.RunWatcher
    shown_points: tuple | None = field(default=None)  # (train points, eval points, step, kept step) on the plot

    @classmethod
    def of(cls, run_id: str) -> RunOnView:
        return cls(lifecycle.RunWatcher(run_id))

    @property
    def run_id(self) -> str:
        return self.watcher.run_id


@dataclass
class ProgressView:
    header: gr.Markdown
    progress: gr.HTML
    losses: gr.LinePlot
    figures: gr.Markdown
    log: gr.Textbox
    cancel_button: gr.Button
    resume_button: gr.Button
    compare_button: gr.Button  # once the run has an adapter: chat with it on the Compare tab (app.py wires it)
    timer: gr.Timer
    on_view: gr.State  # RunOnView of the run on view (per visitor), or None

    @property
    def shown(self) -> list[gr.Component]:
        """What tick() fills in, in its order."""
        return [self.header, self.progress, self.losses, self.figures, self.log, self.cancel_button,
                self.resume_button, self.compare_button, self.timer]


def build() -> ProgressView:
    header = gr.Markdown("No run in progress.")
    progress = gr.HTML("")
    with gr.Row(equal_height=False):
        losses = gr.LinePlot(None, x="step", y="loss", color="split", title="Loss",
                             color_map={"train": "#3b82f6", "eval": "#f97316", KEPT: "#16a34a"}, height=300, scale=2)
        with gr.Column(scale=1):
            figures = gr.Markdown("")
            with gr.Row():
                cancel_button = gr.Button("Cancel", variant="stop", interactive=False)
                resume_button = gr.Button("Resume", interactive=False)
            compare_button = gr.Button("Compare now", variant="primary", visible=False)
    log = gr.Textbox(label="Log (tail)", lines=8, max_lines=8, interactive=False, autoscroll=True)
    return ProgressView(header, progress, losses, figures, log, cancel_button, resume_button, compare_button,
                        gr.Timer(POLL_SECONDS, active=False), gr.State(None))


def wire(view: ProgressView, demo: gr.Blocks) -> None:
    """The view's own events; a start of a run sets view.on_view, then calls tick (train_tab.wire).
    On load: reattach after a reload or a restart, to the newest queued or running run, curves from its metrics."""
    private = {"api_visibility": "private"}
    shown = view.shown
    view.timer.tick(tick, [view.on_view], shown, show_progress="hidden", **private)
    view.cancel_button.click(cancel, [view.on_view], None, **private).success(tick, [view.on_view], shown, **private)
    view.resume_button.click(resume, [view.on_view], None, **private).success(tick, [view.on_view], shown, **private)
    demo.load(reattach, None, [view.on_view], **private).success(tick, [view.on_view], shown, **private)


@shows_errors
def reattach(request: gr.Request):
    """The visitor's newest queued or running run (their own; the owner's: any)."""
    visitor, rules = visitor_of(request), policy()
    for info in lifecycle.list_runs():  # newest first
        if info.status in ACTIVE and rules.owns(visitor, info.id):
            return RunOnView.of(info.id)
    return None


@shows_errors
def tick(on_view: RunOnView | None):
    if on_view is None:
        return ("No run in progress: start one above, or look at earlier runs in the Runs tab.", "",
                None, "", "", gr.Button(interactive=False), gr.Button(interactive=False),
                gr.Button(visible=False), gr.Timer(active=False))
    try:
        info = on_view.watcher.info()
    except registry.RunNotFound:
        return (f"Run {on_view.run_id} no longer exists (deleted).", "", None, "", "",
                gr.Button(interactive=False), gr.Button(interactive=False), gr.Button(visible=False),
                gr.Timer(active=False))
    progress = on_view.watcher.progress
    points = (len(progress.train_curve), len(progress.eval_curve), progress.step, progress.best_step)
    curves = gr.skip()
    if on_view.shown_points != points:  # send the curves only when they changed
        on_view.shown_points = points
        curves = _curves_frame(progress.train_curve, progress.eval_curve, progress.best_step)
    return (_header(info), _progress_bar(info), curves, _figures(info), _plain(lifecycle.log_tail(info.id, 3000)),
            gr.Button(interactive=info.status in ACTIVE), gr.Button(interactive=info.status in RESUMABLE),
            gr.Button(visible=info.adapter is not None), gr.Timer(active=info.status in ACTIVE))


def _plain(log: str) -> str:
    """The log without terminal control sequences (progress bars move the cursor with them)."""
    return ANSI_ESCAPE.sub("", log)


def _curves_frame(train: list, evaluation: list, kept_step: int | None = None) -> pd.DataFrame | None:
    rows = [{"step": s, "loss": v, "split": "train"} for s, v in train]
    rows += [{"step": s, "loss": v, "split": "eval"} for s, v in evaluation]
    rows += kept_marker(rows, kept_step, "split", KEPT)
    return pd.DataFrame(rows, columns=["step", "loss", "split"]) if rows else None  # None: see data_tab.build


def kept_marker(rows: list[dict], kept_step: int | None, column: str, name: str) -> list[dict]:
    """Early stopping's chosen step drawn as a vertical line across the curves: two points of one series at that
    step, at the lowest and the highest loss plotted."""
    if kept_step is None or not rows:
        return []
    losses = [row["loss"] for row in rows]
    return [{"step": kept_step, "loss": loss, column: name.format(step=kept_step)} for loss in (min(losses), max(losses))]


def _header(info: lifecycle.RunInfo) -> str:
    what = {
        machine.QUEUED: "waiting in the queue for a free GPU slot",
        machine.RUNNING: "training",
        machine.COMPLETED: "completed: the adapter is saved; **Compare now** chats with it beside the base model, "
                           "the Runs tab downloads it",
        machine.FAILED: f"failed: {info.reason}",
        machine.CANCELLED: f"cancelled: {info.reason}",
        machine.INTERRUPTED: f"interrupted: {info.reason}",
    }.get(info.status, info.status)
    if info.status in RESUMABLE:
        what += " (Resume continues from the newest checkpoint)"
    if info.stop_reason:  # early stopping: the adapter is the kept step's
        what += f"\n\n**Early stopping:** {info.stop_reason}."
    return (f"### Run `{info.id}` · {info.status}\n{method_name(info.method)} on **{info.dataset}**, base "
            f"`{info.base_model}` · {what}")


def _progress_bar(info: lifecycle.RunInfo) -> str:
    if not info.max_steps:
        return "<p>Preparing (loading the model and the data)…</p>" if info.status in ACTIVE else ""
    eta = f" · ETA {duration(info.eta_seconds)}" if info.eta_seconds is not None else ""
    return (f"<progress value='{info.step}' max='{info.max_steps}' style='width:100%;height:1.1em'></progress>"
            f"<p>Step {info.step} / {info.max_steps} · epoch {info.epoch:.2f} · elapsed "
            f"{duration(info.elapsed)}{eta}</p>")


def _figures(info: lifecycle.RunInfo) -> str:
    memory = f"{info.peak_gpu_memory_gb:.2f} GB" if info.peak_gpu_memory_gb is not None else "- (no GPU)"
    speed = f"{info.tokens_per_second:,.0f}" if info.tokens_per_second is not None else "-"
    return ("| figure | latest |\n|---|---|\n"
            f"| train loss | {number(info.train_loss)} |\n| eval loss | {number(info.eval_loss)} |\n"
            f"| learning rate | {number(info.learning_rate, 3)} |\n| tokens / s | {speed} |\n"
            f"| peak GPU memory | {memory} |")


def _run_to(action: str, on_view: RunOnView | None, request: gr.Request) -> str:
    """The id of the run on view, if the visitor may `action` it."""
    if on_view is None:
        raise gr.Error(f"No run on view to {action}.")
    require_run(request, on_view.run_id, f"{action} runs")
    return on_view.run_id


@shows_errors
def cancel(on_view: RunOnView | None, request: gr.Request):
    lifecycle.cancel_run(_run_to("cancel", on_view, request))
    gr.Info("Cancel requested: training stops at its next step and keeps the adapter as it stands.")


@shows_errors
def resume(on_view: RunOnView | None, request: gr.Request):
    run_id = _run_to("resume", on_view, request)
    lifecycle.resume_run(run_id)
    gr.Info(f"Run {run_id} queued again; it continues from its newest checkpoint.")
