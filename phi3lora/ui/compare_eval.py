"""Compare tab, held-out evaluation: base against adapted on a run's own eval split (phi3lora.inference.evaluation):
loss, perplexity and sample answers, in a background task for a large split."""
from __future__ import annotations

import shutil
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ..inference import evaluation
from ..inference.forgetting import forgetting_sentence, gain_sentence
from ..inference.service import ChatService
from ..tasks import machine
from .common import download_path, shows_errors
from .downloads import offer
from .state import handler
from .visitors import require_run


@dataclass
class EvaluationTab:
    run: gr.Dropdown
    samples: gr.Number
    start_button: gr.Button
    summary: gr.Markdown
    table: gr.Dataframe
    csv_file: gr.HTML  # a download link (ui/downloads.py)
    timer: gr.Timer


def build() -> EvaluationTab:
    gr.Markdown("Base against adapted on the run's own held-out split: loss and perplexity on every eval "
                "conversation, and greedy answers to the first few beside the reference; and, to see what the "
                "adapter cost elsewhere, both losses on a small set of everyday conversations. A large split is "
                f"evaluated in a background process (over {evaluation.inline_max()} conversations).")
    with gr.Row(equal_height=True):
        run = gr.Dropdown([], label="Run", scale=3)
        samples = gr.Number(value=evaluation.DEFAULT_SAMPLES, precision=0, minimum=0, maximum=64, scale=1,
                            label="sample answers")
        start_button = gr.Button("Evaluate", variant="primary", scale=1)
    summary = gr.Markdown(elem_id="evaluation-summary")
    table = gr.Dataframe(headers=list(evaluation.CSV_COLUMNS), interactive=False, wrap=True,
                         label="Sample eval prompts")
    csv_file = gr.HTML(visible=False, elem_id="evaluation-csv", padding=True)  # the CSV's link (downloads.py)
    timer = gr.Timer(2.0, active=False)
    return EvaluationTab(run, samples, start_button, summary, table, csv_file, timer)


def wire(held_out: EvaluationTab, chat: ChatService) -> None:
    private = {"api_visibility": "private"}
    shown = [held_out.summary, held_out.table, held_out.csv_file, held_out.timer]
    held_out.run.change(show_evaluation, [held_out.run], shown, **private)
    held_out.start_button.click(handler(start_evaluation, chat), [held_out.run, held_out.samples], shown, **private)
    held_out.timer.tick(show_evaluation, [held_out.run], shown, show_progress="hidden", **private)


@shows_errors
def start_evaluation(chat: ChatService | None, run_id: str | None, samples: float | None, request: gr.Request):
    require_run(request, run_id, "evaluate")
    samples = int(samples or 0)
    if evaluation.should_run_in_background(run_id):
        evaluation.start_evaluation(run_id, samples)
    else:
        evaluation.evaluate_run(run_id, samples, log=lambda *_: None, chat=chat)  # on the chat model if it fits
    return show_evaluation(run_id, request)


@shows_errors
def show_evaluation(run_id: str | None, request: gr.Request):
    """The run's last evaluation: figures, sample table and CSV; the timer runs while one is in progress."""
    empty, no_link = pd.DataFrame(columns=list(evaluation.CSV_COLUMNS)), gr.HTML(value="", visible=False)
    if not run_id:
        return "", empty, no_link, gr.Timer(active=False)
    require_run(request, run_id)
    status = evaluation.evaluation_status(run_id)
    if status["status"] in machine.ACTIVE:
        return (f"Evaluating run {run_id} in the background…", empty, no_link, gr.Timer(active=True))
    if status["status"] in (machine.FAILED, machine.CANCELLED, machine.INTERRUPTED):
        ended = "failed" if status["status"] == machine.FAILED else f"was {status['status']}"
        return (f"The last evaluation of {run_id} {ended}: {status['message']}", empty, no_link,
                gr.Timer(active=False))
    done = evaluation.read_evaluation(run_id)
    if done is None:
        return (f"Run {run_id} has not been evaluated yet.", empty, no_link, gr.Timer(active=False))
    s = done["summary"]
    figures = (f"**Run {run_id}** on {s['eval_conversations']} held-out conversations ({s['eval_tokens']} scored "
               f"tokens):\n\n| | loss | perplexity |\n|---|---|---|\n"
               f"| base | {s['base_loss']:.4f} | {s['base_perplexity']:.2f} |\n"
               f"| adapted | {s['adapted_loss']:.4f} | {s['adapted_perplexity']:.2f} |")
    figures += "".join(f"\n\n{sentence}" for sentence in (gain_sentence(s), forgetting_sentence(s)) if sentence)
    csv_copy = download_path(f"phi3lora-{run_id}-evaluation.csv")
    shutil.copyfile(evaluation.evaluation_dir(run_id) / "samples.csv", csv_copy)
    return (figures, pd.DataFrame(done["rows"], columns=list(evaluation.CSV_COLUMNS)), offer(csv_copy, run_id),
            gr.Timer(active=False))

