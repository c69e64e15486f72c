"""The Runs tab's Push section: the selected run's adapter, or its merged model, to a Hugging Face Hub model
repository with a model card (phi3lora.deploy.hub_push does the work). Layout and wiring only.

The token is the server's, read as `space push` reads it ($HF_TOKEN, e.g. a Space secret, or the saved login):
never typed into the page. So on a Space only its owner may push; others are refused, whatever runs they own.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..deploy import hub_push
from ..policy.access import AccessDenied
from .common import shows_errors
from .visitors import policy, require_run


@dataclass
class PushSection:
    repo: gr.Textbox
    public: gr.Checkbox
    merged: gr.Checkbox
    button: gr.Button
    result: gr.Markdown


def build() -> PushSection:
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        gr.Markdown("Uploads the selected run's adapter (or its merged model, once exported above) with a model "
                    "card: base model, method, settings, the dataset's name and size (never its records), the "
                    "figures. Private unless you tick Public. The token is this server's `HF_TOKEN`.")
        with gr.Row(equal_height=True):
            repo = gr.Textbox(label="Repository", placeholder="OWNER/NAME", scale=2)
            public = gr.Checkbox(False, label="Public", scale=0, min_width=100)
            merged = gr.Checkbox(False, label="Merged model", scale=0, min_width=140)
            button = gr.Button("Push", scale=0, min_width=100)
        result = gr.Markdown("", padding=True)
    return PushSection(repo, public, merged, button, result)


def wire(section: PushSection, selected: gr.Dropdown) -> None:
    section.button.click(push, [selected, section.repo, section.public, section.merged], [section.result],
                         api_visibility="private")


@shows_errors
def push(run_id: str | None, repo: str | None, public: bool, merged: bool, request: gr.Request):
    visitor = require_run(request, run_id, "push to the Hub")
    if not policy().is_owner(visitor):
        raise AccessDenied("Only the owner of this Space pushes to the Hugging Face Hub (with the Space's token); "
                           "download the adapter (.zip) and push it with your own account instead.")
    lines: list[str] = []
    options = hub_push.HubPushOptions(repo=(repo or "").strip(), public=bool(public), merged=bool(merged))
    url = hub_push.push_run(run_id, options, log=lines.append, export_if_missing=False)
    what = "merged model" if merged else "adapter"
    return (f"Pushed the {what} of run {run_id} to [{options.repo}]({url}) "
            f"({'public' if public else 'private'}).\n\n" + "\n".join(f"- {line}" for line in lines))
