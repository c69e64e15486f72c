"""Compare tab: the base and up to three adapters answering side by side, streamed from one batched generate
(compare_chat.py); a blind A/B test whose votes are stored with the runs (compare_blind.py); and the held-out
evaluation of a run, base vs adapted (compare_eval.py). This module lays the tab out, wires it, and picks adapters.

One `ChatService` (the AppState's) serves every visitor: one base model in memory, loaded by the first message
that needs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..policy import limits
from ..runs import lifecycle, registry
from ..policy.access import Visitor
from ..inference.service import BASE_COLUMN, AdapterChoice, download_hub_adapter, import_adapter_zip
from . import compare_blind, compare_eval
from .common import forget_cached, hub_reachable, shows_errors, timestamp
from .compare_blind import BlindTab
from .compare_chat import (MAX_ADAPTER_COLUMNS, ChatForm, Sampling, adapter_options,
                           chat_queue, compare_api, contender_name, max_new_tokens_limit, regenerate, release, send)
from .compare_eval import EvaluationTab
from .safe_text import no_remote_images
from .state import AppState, handler, input_set, read
from .train_progress import RunOnView
from .visitors import policy, require_training, visitor_of

COMPARE_TAB = "compare"  # the Compare tab's id in app.py's gr.Tabs, for Compare now


@dataclass
class CompareTab:
    adapters: gr.Dropdown
    refresh_button: gr.Button
    zip_upload: gr.File
    hub_id: gr.Textbox
    hub_button: gr.Button
    added: gr.State  # this session's uploaded and hub adapters: ref -> AdapterChoice
    shown: gr.State  # the adapter refs the adapter columns show now
    system: gr.Textbox
    chats: list[gr.Chatbot]  # base first, then one per adapter slot
    prompt: gr.Textbox
    send_button: gr.Button
    regenerate_button: gr.Button
    clear_button: gr.Button
    greedy: gr.Checkbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Slider
    seed: gr.Number
    four_bit: gr.Checkbox
    model_status: gr.Markdown
    release_button: gr.Button
    note: gr.Markdown  # which adapters the columns compare with the base, or that none is chosen yet
    chosen: gr.State  # whether the visitor has picked adapters themselves: then the newest run is not preselected
    blind: BlindTab | None = None
    evaluation: EvaluationTab | None = None

    def sampling_inputs(self) -> dict[str, gr.Component]:
        """The shared sampling settings, by Sampling's field names."""
        return {"greedy": self.greedy, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed, "four_bit": self.four_bit}

    def chat_inputs(self, with_prompt: bool) -> dict[str, gr.Component | list[gr.Component]]:
        """What a chat event reads, by ChatForm's field names (sampling's by Sampling's)."""
        prompt = {"prompt": self.prompt} if with_prompt else {}
        return {"shown": self.shown, "added": self.added, "system": self.system, "chats": self.chats,
                **self.sampling_inputs(), **prompt}

    def chat_form(self, values: dict) -> ChatForm:
        """The ChatForm of a chat event's values (inputs=input_set(chat_inputs(...)))."""
        got = read(values, self.chat_inputs(with_prompt=self.prompt in values))
        return ChatForm(got["shown"], got["added"], got["system"],
                        Sampling(**{name: got[name] for name in self.sampling_inputs()}), got["chats"],
                        got.get("prompt", ""))


def build(state: AppState) -> CompareTab:
    with gr.Tabs():
        with gr.Tab("Side by side"):
            tab = _build_side_by_side(state)
        with gr.Tab("Blind A/B"):
            tab.blind = compare_blind.build()
        with gr.Tab("Held-out evaluation"):
            tab.evaluation = compare_eval.build()
    return tab


def _build_side_by_side(state: AppState) -> CompareTab:
    with gr.Row():
        adapters = gr.Dropdown([], value=[], multiselect=True, max_choices=MAX_ADAPTER_COLUMNS, scale=4,
                               label=f"Adapters (up to {MAX_ADAPTER_COLUMNS})",
                               elem_id="compare-adapters",
                               info="Adapters of completed and cancelled runs, and those you add below. "
                                    "The base model always answers in the first column.")
        refresh_button = gr.Button("Refresh list", scale=1)
    note = gr.Markdown(comparing_note([], {}), elem_id="compare-note")
    with gr.Accordion("Add an adapter: upload a zip or give a hub id", open=False):
        with gr.Row():
            zip_upload = gr.File(label="Adapter zip (adapter_config.json + adapter_model.safetensors)",
                                 file_types=[".zip"], scale=2)
            with gr.Column(scale=2):
                hub_id = gr.Textbox(label="Hub adapter id", placeholder="owner/name")
                hub_button = gr.Button("Add from the hub")
    system = gr.Textbox(label="System prompt (every column)", placeholder="optional", lines=1)
    with gr.Row():
        chats = [gr.Chatbot(label="Base model", height=380, buttons=["copy", "copy_all"], elem_id="chat-base")]
        for slot in range(MAX_ADAPTER_COLUMNS):
            chats.append(gr.Chatbot(label=f"Adapter {slot + 1}", height=380, buttons=["copy", "copy_all"],
                                    visible=False, elem_id=f"chat-adapter-{slot + 1}"))
    with gr.Row(equal_height=True):
        prompt = gr.Textbox(label="Prompt (every column)", placeholder="Ask something and press Enter", scale=5,
                            lines=1, elem_id="compare-prompt")
        send_button = gr.Button("Send", variant="primary", scale=1)
        regenerate_button = gr.Button("Regenerate", scale=1)
        clear_button = gr.Button("Clear", scale=1)
    with gr.Accordion("Sampling (shared by every column)", open=False):
        with gr.Row():
            greedy = gr.Checkbox(value=True, label="greedy", info="Always the most likely token: repeatable answers.")
            temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="temperature", interactive=False)
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="top-p", interactive=False)
        with gr.Row():
            max_new_tokens = gr.Slider(8, max_new_tokens_limit(), value=min(limits.DEFAULT_MAX_NEW_TOKENS, max_new_tokens_limit()),
                                       step=8, label="max new tokens")
            seed = gr.Number(value=0, precision=0, label="seed", info="Sampling with the same seed repeats itself.")
    with gr.Row(equal_height=True):
        four_bit = gr.Checkbox(value=False, label="4-bit base", scale=1,
                               info="Load the base in 4-bit NF4 for chat: about a third of the memory.")
        model_status = gr.Markdown(state.chat.status())
        release_button = gr.Button("Release model memory", scale=1)
    return CompareTab(adapters, refresh_button, zip_upload, hub_id, hub_button, gr.State({}), gr.State([]), system,
                      chats, prompt, send_button, regenerate_button, clear_button, greedy, temperature, top_p,
                      max_new_tokens, seed, four_bit, model_status, release_button, note, gr.State(False))


def wire(tab: CompareTab, tab_item: gr.Tab, state: AppState, demo: gr.Blocks | None = None) -> None:
    """Connect the tab; with `demo`, the page's load also fills the adapter lists (and preselects the newest run)."""
    private = {"api_visibility": "private"}
    pickers = [tab.adapters, tab.blind.contender_a, tab.blind.contender_b, tab.evaluation.run]
    refresh_inputs = [tab.added, tab.chosen, *pickers]
    for trigger in (tab_item.select, tab.refresh_button.click, *([demo.load] if demo else [])):
        trigger(refresh_choices, refresh_inputs, pickers, **private)
    tab.adapters.input(lambda: True, None, [tab.chosen], **private)  # the visitor's own pick: never overwritten
    tab.zip_upload.upload(add_zip, [tab.zip_upload, tab.added, tab.adapters],
                          [tab.added, tab.adapters, tab.zip_upload], **private).success(
        refresh_choices, refresh_inputs, pickers, **private)
    tab.hub_button.click(add_hub, [tab.hub_id, tab.added, tab.adapters], [tab.added, tab.adapters], **private).success(
        refresh_choices, refresh_inputs, pickers, **private)
    tab.adapters.change(show_columns, [tab.adapters, tab.added, tab.shown, *tab.chats],
                        [tab.shown, *tab.chats], **private)
    tab.adapters.change(describe_choice, [tab.adapters, tab.added], [tab.note], show_progress="hidden", **private)
    tab.greedy.change(lambda greedy: [gr.Slider(interactive=not greedy)] * 2, [tab.greedy],
                      [tab.temperature, tab.top_p], **private)

    chatting = {**private, **chat_queue()}
    send_, regenerate_ = (handler(fn, state.chat, form=tab.chat_form) for fn in (send, regenerate))
    for trigger in (tab.send_button.click, tab.prompt.submit):
        trigger(send_, input_set(tab.chat_inputs(with_prompt=True)), [tab.prompt, *tab.chats], **chatting).then(
            state.chat.status, None, [tab.model_status], **private)
    tab.regenerate_button.click(regenerate_, input_set(tab.chat_inputs(with_prompt=False)), tab.chats,
                                **chatting).then(state.chat.status, None, [tab.model_status], **private)
    tab.clear_button.click(lambda: [[]] * len(tab.chats), None, tab.chats, **private)
    tab.release_button.click(handler(release, state.chat), None, [tab.model_status], **private)

    compare_blind.wire(tab.blind, state.chat, tab.added, tab.system, tab.sampling_inputs())
    compare_eval.wire(tab.evaluation, state.chat)


def add_api(state: AppState) -> None:
    """`/compare`: answers of the base and of adapters to one prompt, streamed (gradio_client gets the last)."""
    prompt, adapters = gr.Textbox(label="prompt", visible=False), gr.Textbox(label="adapters", visible=False)
    system = gr.Textbox(label="system", visible=False)
    max_new = gr.Number(label="max_new_tokens", value=limits.DEFAULT_MAX_NEW_TOKENS, precision=0, visible=False)
    answers = gr.JSON(label="answers", visible=False)
    gr.Button(visible=False).click(handler(compare_api, state.chat), [prompt, adapters, system, max_new], [answers],
                                   api_name="compare", **chat_queue())
    compare_blind.add_api(state.chat)  # /blind_pair, /blind_vote


# --- picking adapters ------------------------------------------------------------------------------------------

@shows_errors
def refresh_choices(added: dict, chosen: bool, picked: list[str] | None, contender_a: str | None,
                    contender_b: str | None, evaluated: str | None, request: gr.Request):
    """Every picker's choices; what is picked stays. Until the visitor picks adapters themselves, the newest
    finished run's adapter is picked for them, so that a first prompt shows the difference."""
    visitor = visitor_of(request)
    options = adapter_options(added, visitor)
    run_ids = [ref.removeprefix("run:") for _, ref in options
               if ref.startswith("run:") and policy().owns(visitor, ref.removeprefix("run:"))]
    refs = {ref for _, ref in options}
    contenders = [("Base model", BASE_COLUMN), *options]
    keep = [ref for ref in picked or [] if ref in refs]
    newest_run = next((ref for _, ref in options if ref.startswith("run:")), None)  # options: runs newest first
    if not keep and not chosen and newest_run:
        keep = [newest_run]
    first_adapter = options[0][1] if options else None
    return (gr.Dropdown(choices=options, value=keep),
            gr.Dropdown(choices=contenders, value=contender_a if contender_a in refs | {BASE_COLUMN} else BASE_COLUMN),
            gr.Dropdown(choices=contenders, value=contender_b if contender_b in refs else first_adapter),
            gr.Dropdown(choices=run_ids, value=evaluated if evaluated in run_ids else (run_ids[0] if run_ids else None)))


def _pick(added: dict, picked: list[str] | None, choice: AdapterChoice, visitor: Visitor):
    added = {**added, choice.ref: choice}
    picked = list(picked or [])
    if choice.ref not in picked and len(picked) < MAX_ADAPTER_COLUMNS:
        picked.append(choice.ref)
    return added, gr.Dropdown(choices=adapter_options(added, visitor), value=picked)


@shows_errors
def add_zip(path: str | None, added: dict, picked: list[str] | None, request: gr.Request):
    try:
        visitor = require_training(request, "add adapters")
        if not path:
            raise gr.Error("Choose an adapter zip first.")
        added, dropdown = _pick(added, picked, import_adapter_zip(path, visitor.owner_key), visitor)
    finally:
        if path:
            forget_cached(path)  # unpacked or refused, the zip leaves Gradio's cache
    return added, dropdown, None


@shows_errors
def add_hub(repo_id: str, added: dict, picked: list[str] | None, request: gr.Request):
    visitor = require_training(request, "add adapters")
    if not repo_id.strip():
        raise gr.Error("Type a hub adapter id (owner/name) first.")
    unreachable = hub_reachable()
    if unreachable:
        raise gr.Error(f"Cannot fetch {repo_id.strip()}: {unreachable}. Upload the adapter as a zip instead.")
    return _pick(added, picked, download_hub_adapter(repo_id), visitor)


def show_columns(picked: list[str] | None, added: dict, shown: list[str], *chats):
    """One column per picked adapter, labelled with it; a column whose adapter changed starts a fresh history."""
    labels = {choice.ref: choice.label for choice in added.values()}
    picked = list(picked or [])[:MAX_ADAPTER_COLUMNS]
    updates = []
    for slot in range(MAX_ADAPTER_COLUMNS):
        ref = picked[slot] if slot < len(picked) else None
        unchanged = slot < len(shown) and shown[slot] == ref
        label = labels.get(ref) or (contender_name(ref) if ref else f"Adapter {slot + 1}")
        updates.append(gr.Chatbot(visible=ref is not None, label=label,
                                  value=chats[slot + 1] if unchanged else []))
    return picked, gr.skip(), *updates



# --- saying what is compared ------------------------------------------------------------------------------------

@shows_errors
def describe_choice(picked: list[str] | None, added: dict, request: gr.Request) -> str:
    options = dict((ref, label) for label, ref in adapter_options(added, visitor_of(request)))
    return comparing_note([ref for ref in picked or [] if ref in options], options)


def comparing_note(picked: list[str], labels: dict[str, str]) -> str:
    """One line: the base against which adapters (a run by its id, dataset and end), or how to pick one."""
    if not picked:
        return ("**No adapter chosen**: the base model answers alone. Pick a run's adapter above to see what "
                "training changed.")
    return "Comparing base with " + ", ".join(_named(ref, labels.get(ref, ref)) for ref in picked) + "."


def _named(ref: str, label: str) -> str:
    if not ref.startswith("run:"):
        return no_remote_images(label)
    try:
        info = lifecycle.run_info(ref.removeprefix("run:"))
    except registry.RunNotFound:
        return no_remote_images(label)
    finished = Path(info.adapter, "adapter_model.safetensors") if info.adapter else None
    when = timestamp(finished.stat().st_mtime) if finished and finished.is_file() else info.status
    return f"run **{info.id}** ({no_remote_images(Path(info.dataset).name)}, finished {when})"


@shows_errors
def show_run(on_view: RunOnView | None, added: dict, request: gr.Request):
    """Compare now (Train tab): the run on view in the first column, picked as the visitor's own choice, and the
    Compare tab opened."""
    if on_view is None:
        raise gr.Error("No run on view to compare.")
    ref = f"run:{on_view.run_id}"
    options = adapter_options(added, visitor_of(request))
    if ref not in {r for _, r in options}:
        raise gr.Error(f"Run {on_view.run_id} has no adapter to compare yet.")
    return gr.Dropdown(choices=options, value=[ref]), True, gr.Tabs(selected=COMPARE_TAB)
