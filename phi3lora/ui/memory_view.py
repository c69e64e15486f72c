"""The Train tab's memory estimate: one line under the form, computed again as the settings change
(training/memory_estimate.py does the arithmetic, without torch), and `/memory_estimate` for programs."""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..errors import UserError
from ..job_builder import build_job, resolve_job, text_layer, values_layer
from ..training import memory_estimate
from .common import shows_errors
from .visitors import require_allowed_base, require_training


def build(initial: dict[str, Any]) -> gr.Markdown:
    """The line, for the form's initial values (a LoRA job): shown at once, before any change."""
    return gr.Markdown(_text(lambda: build_job(values_layer({**initial, "method": "lora"}))), elem_id="memory-estimate")


def wire(view: gr.Markdown, method: gr.Component, fields: dict[str, gr.Component]) -> None:
    """Every change of the method or a field estimates again (private: the page's own event)."""
    keys = list(fields)
    components = [method, *fields.values()]

    def on_change(method_value: str, *values: Any) -> str:
        form = {key: None if isinstance(value, str) and not value.strip() else value for key, value in zip(keys, values)}
        return _text(lambda: _allowed(build_job(values_layer({**form, "method": method_value}))))

    gr.on([component.change for component in components], on_change, components, [view],
          api_visibility="private", show_progress="hidden", queue=False)


def add_api() -> None:
    """`/memory_estimate`: settings as /start_training takes them -> the estimate, the free memory and the verdict."""
    settings = gr.Textbox(label="settings", visible=False)
    result = gr.JSON(label="memory", visible=False)
    gr.Button(visible=False).click(memory_estimate_api, [settings], [result], api_name="memory_estimate")


@shows_errors
def memory_estimate_api(settings: str | None, request: gr.Request) -> dict:
    """The job the settings give (YAML/JSON, as /start_training's), as it would run here: its memory estimate by
    component, the memory free for it, whether it fits, and the sentence the Train tab shows (with the setting that
    would make it fit)."""
    require_training(request, "estimate a run's memory")
    config, _ = resolve_job(_allowed(build_job(text_layer(settings, "settings"))))
    return memory_estimate.report(config)


def _allowed(job):
    """The job, once its base model is one this server may read: the estimate reads the base's config.json (from
    the hub, for a repository id), and an outsider's name must make it read nothing and tell nothing."""
    require_allowed_base(job.model.base_model)
    return job


def _text(job) -> str:
    try:
        config, _ = resolve_job(job())
        found = memory_estimate.report(config)
    except UserError as error:
        return f"memory estimate: not yet ({str(error)[:1000]})"  # a UserError's message is short already
    return ("**Will not fit:** " if found["fits"] is False else "") + found["message"]
