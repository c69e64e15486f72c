"""Compare tab: the base and up to three adapters answering side by side, streamed from one batched generate;
a blind A/B test whose votes are stored with the runs; and the held-out evaluation of a run (base vs adapted).

One `ChatService` serves every visitor: one base model in memory, loaded by the first message that needs it.
"""
from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from .. import evaluation, limits, votes
from ..runs import RunNotFound, not_found
from ..access import Visitor
from ..chat import BASE_COLUMN, AdapterChoice, ChatService, download_hub_adapter, import_adapter_zip, run_adapters
from .safe_text import no_remote_images
from .common import download_path, forget_cached, hub_reachable, shows_errors
from .downloads import offer
from .visitors import policy, require_run, require_training, visitor_of

MAX_ADAPTER_COLUMNS = 3
DEFAULT_MAX_NEW_TOKENS = 128
SERVICE = ChatService()


def max_new_tokens_limit() -> int:
    return limits.limit("PHI3LORA_MAX_NEW_TOKENS")


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
    blind: BlindTab | None = None
    evaluation: EvaluationTab | None = None


@dataclass
class BlindTab:
    contender_a: gr.Dropdown
    contender_b: gr.Dropdown
    prompt: gr.Textbox
    generate_button: gr.Button
    answer_a: gr.Textbox
    answer_b: gr.Textbox
    vote_buttons: dict[str, gr.Button]
    pair: gr.State  # {"id": votes.new_pair's id, "shown": [contender shown as A, as B]}, hidden until the vote
    result: gr.Markdown


@dataclass
class EvaluationTab:
    run: gr.Dropdown
    samples: gr.Number
    start_button: gr.Button
    summary: gr.Markdown
    table: gr.Dataframe
    csv_file: gr.HTML  # a download link (ui/downloads.py)
    timer: gr.Timer


def build() -> CompareTab:
    with gr.Tabs():
        with gr.Tab("Side by side"):
            tab = _build_side_by_side()
        with gr.Tab("Blind A/B"):
            tab.blind = _build_blind()
        with gr.Tab("Held-out evaluation"):
            tab.evaluation = _build_evaluation()
    return tab


def _build_side_by_side() -> CompareTab:
    with gr.Row():
        adapters = gr.Dropdown([], value=[], multiselect=True, max_choices=MAX_ADAPTER_COLUMNS, scale=4,
                               label=f"Adapters (up to {MAX_ADAPTER_COLUMNS})",
                               info="Adapters of completed and cancelled runs, and those you add below. "
                                    "The base model always answers in the first column.")
        refresh_button = gr.Button("Refresh list", scale=1)
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
            max_new_tokens = gr.Slider(8, max_new_tokens_limit(), value=min(DEFAULT_MAX_NEW_TOKENS, max_new_tokens_limit()),
                                       step=8, label="max new tokens")
            seed = gr.Number(value=0, precision=0, label="seed", info="Sampling with the same seed repeats itself.")
    with gr.Row(equal_height=True):
        four_bit = gr.Checkbox(value=False, label="4-bit base", scale=1,
                               info="Load the base in 4-bit NF4 for chat: about a third of the memory.")
        model_status = gr.Markdown(SERVICE.status())
        release_button = gr.Button("Release model memory", scale=1)
    return CompareTab(adapters, refresh_button, zip_upload, hub_id, hub_button, gr.State({}), gr.State([]), system,
                      chats, prompt, send_button, regenerate_button, clear_button, greedy, temperature, top_p,
                      max_new_tokens, seed, four_bit, model_status, release_button)


def _build_blind() -> BlindTab:
    gr.Markdown("Two answers to your prompt, shown as A and B in random order. Vote, then see who was who; "
                "the vote is stored with the runs and counts toward their win rate.")
    with gr.Row():
        contender_a = gr.Dropdown([], label="Contender 1")
        contender_b = gr.Dropdown([], label="Contender 2")
    with gr.Row(equal_height=True):
        prompt = gr.Textbox(label="Prompt", scale=5, elem_id="blind-prompt")
        generate_button = gr.Button("Generate A and B", variant="primary", scale=1)
    with gr.Row():
        answer_a = gr.Textbox(label="A", lines=6, interactive=False, elem_id="blind-a")
        answer_b = gr.Textbox(label="B", lines=6, interactive=False, elem_id="blind-b")
    with gr.Row():
        vote_buttons = {outcome: gr.Button(label, interactive=False) for outcome, label in
                        [("A", "A is better"), ("B", "B is better"), ("tie", "Tie"), ("both_bad", "Both are bad")]}
    result = gr.Markdown(elem_id="blind-result")
    return BlindTab(contender_a, contender_b, prompt, generate_button, answer_a, answer_b, vote_buttons,
                    gr.State(None), result)


def _build_evaluation() -> EvaluationTab:
    gr.Markdown("Base against adapted on the run's own held-out split: loss and perplexity on every eval "
                "conversation, and greedy answers to the first few beside the reference. A large split is "
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


def wire(tab: CompareTab, tab_item: gr.Tab) -> None:
    private = {"api_visibility": "private"}
    pickers = [tab.adapters, tab.blind.contender_a, tab.blind.contender_b, tab.evaluation.run]
    for trigger in (tab_item.select, tab.refresh_button.click):
        trigger(refresh_choices, [tab.added, *pickers], pickers, **private)
    tab.zip_upload.upload(add_zip, [tab.zip_upload, tab.added, tab.adapters],
                          [tab.added, tab.adapters, tab.zip_upload], **private).success(
        refresh_choices, [tab.added, *pickers], pickers, **private)
    tab.hub_button.click(add_hub, [tab.hub_id, tab.added, tab.adapters], [tab.added, tab.adapters], **private).success(
        refresh_choices, [tab.added, *pickers], pickers, **private)
    tab.adapters.change(show_columns, [tab.adapters, tab.added, tab.shown, *tab.chats],
                        [tab.shown, *tab.chats], **private)
    tab.greedy.change(lambda greedy: [gr.Slider(interactive=not greedy)] * 2, [tab.greedy],
                      [tab.temperature, tab.top_p], **private)

    sampling = [tab.greedy, tab.temperature, tab.top_p, tab.max_new_tokens, tab.seed, tab.four_bit]
    chatting = {**private, **chat_queue()}
    chat_inputs = [tab.shown, tab.added, tab.system, *sampling, *tab.chats]
    for trigger in (tab.send_button.click, tab.prompt.submit):
        trigger(send, [tab.prompt, *chat_inputs], [tab.prompt, *tab.chats], **chatting).then(
            SERVICE.status, None, [tab.model_status], **private)
    tab.regenerate_button.click(regenerate, chat_inputs, tab.chats, **chatting).then(
        SERVICE.status, None, [tab.model_status], **private)
    tab.clear_button.click(lambda: [[]] * len(tab.chats), None, tab.chats, **private)
    tab.release_button.click(release, None, [tab.model_status], **private)

    blind = tab.blind
    blind.generate_button.click(blind_generate, [blind.contender_a, blind.contender_b, blind.prompt, tab.added,
                                                 tab.system, *sampling],
                                [blind.pair, blind.answer_a, blind.answer_b, blind.result,
                                 *blind.vote_buttons.values()], **chatting)
    for outcome, button in blind.vote_buttons.items():
        button.click(vote_for(outcome), [blind.pair],
                     [blind.pair, blind.result, *blind.vote_buttons.values()], **private)

    held_out = tab.evaluation
    shown = [held_out.summary, held_out.table, held_out.csv_file, held_out.timer]
    held_out.run.change(show_evaluation, [held_out.run], shown, **private)
    held_out.start_button.click(start_evaluation, [held_out.run, held_out.samples], shown, **private)
    held_out.timer.tick(show_evaluation, [held_out.run], shown, show_progress="hidden", **private)


def add_api() -> None:
    """`/compare`: answers of the base and of adapters to one prompt, streamed (gradio_client gets the last)."""
    prompt, adapters = gr.Textbox(label="prompt", visible=False), gr.Textbox(label="adapters", visible=False)
    system = gr.Textbox(label="system", visible=False)
    max_new = gr.Number(label="max_new_tokens", value=DEFAULT_MAX_NEW_TOKENS, precision=0, visible=False)
    answers = gr.JSON(label="answers", visible=False)
    gr.Button(visible=False).click(compare_api, [prompt, adapters, system, max_new], [answers], api_name="compare",
                                   **chat_queue())


def chat_queue() -> dict:
    """Every event that generates shares one queue: at most $PHI3LORA_CHAT_CONCURRENCY generating at once."""
    return {"concurrency_limit": limits.limit("PHI3LORA_CHAT_CONCURRENCY"), "concurrency_id": "chat"}


# --- picking adapters ------------------------------------------------------------------------------------------

def adapter_options(added: dict[str, AdapterChoice], visitor: Visitor) -> list[tuple[str, str]]:
    """(label, ref) for every adapter the visitor may pick: this session's additions, then runs, newest first."""
    rules = policy()
    runs_allowed = [c for c in run_adapters() if rules.may_chat_with(visitor, c.ref.removeprefix("run:"))]
    return [(c.label, c.ref) for c in added.values()] + [(c.label, c.ref) for c in runs_allowed]


@shows_errors
def refresh_choices(added: dict, picked: list[str] | None, contender_a: str | None, contender_b: str | None,
                    evaluated: str | None, request: gr.Request):
    visitor = visitor_of(request)
    options = adapter_options(added, visitor)
    run_ids = [ref.removeprefix("run:") for _, ref in options
               if ref.startswith("run:") and policy().owns(visitor, ref.removeprefix("run:"))]
    refs = {ref for _, ref in options}
    contenders = [("Base model", BASE_COLUMN), *options]
    keep = [ref for ref in picked or [] if ref in refs]
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
        label = labels.get(ref) or (_contender_name(ref) if ref else f"Adapter {slot + 1}")
        updates.append(gr.Chatbot(visible=ref is not None, label=label,
                                  value=chats[slot + 1] if unchanged else []))
    return picked, gr.skip(), *updates


# --- chatting ----------------------------------------------------------------------------------------------------

def _text(content: Any) -> str:
    """A chat message's text, whatever shape Gradio gives it in (a string, or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list):
        return "".join(_text(part) for part in content)
    return ""


def _turns(history: list[dict] | None) -> list[dict]:
    return [{"role": m["role"], "content": _text(m["content"])} for m in history or []
            if m.get("role") in ("user", "assistant")]


def _sampling(greedy: bool, temperature: float, top_p: float, max_new_tokens: float, seed: float | None) -> dict:
    limit = max_new_tokens_limit()
    if not max_new_tokens or not 1 <= max_new_tokens <= limit:
        raise gr.Error(f"max new tokens must be between 1 and {limit} (the server's limit, PHI3LORA_MAX_NEW_TOKENS), "
                       f"got {max_new_tokens}")
    return {"max_new_tokens": int(max_new_tokens), "temperature": 0.0 if greedy else float(temperature),
            "top_p": float(top_p), "seed": None if seed is None else int(seed)}


def _stream_columns(visitor: Visitor, columns: list[str], histories: list[list[dict]], added: dict, system: str,
                    greedy, temperature, top_p, max_new_tokens, seed, four_bit):
    """Stream answers into histories (each ending with the user's turn); yields the histories after each token."""
    rules = policy()
    rules.require_chat(visitor)
    sampling = _sampling(greedy, temperature, top_p, max_new_tokens, seed)
    for ref in columns:
        if ref.startswith("run:") and not rules.may_chat_with(visitor, ref.removeprefix("run:")):
            raise RunNotFound(not_found(ref.removeprefix("run:")))  # as if it did not exist
    adapters = SERVICE.resolve([c for c in columns if c != BASE_COLUMN], added)
    head = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    conversations = [head + _turns(history) for history in histories]
    for history in histories:
        history.append({"role": "assistant", "content": ""})
    yield histories
    for texts in SERVICE.stream(adapters, columns, conversations, load_in_4bit=four_bit, **sampling):
        for history, text in zip(histories, texts):
            history[-1]["content"] = no_remote_images(text)  # a model can write an image link too
        yield histories


def _columns_and_histories(shown: list[str], chats: tuple) -> tuple[list[str], list[list[dict]]]:
    columns = [BASE_COLUMN, *shown]
    return columns, [list(chats[i] or []) for i in range(len(columns))]


def _all_chats(histories: list[list[dict]], chats: tuple) -> list:
    """Every Chatbot's new value: the streamed histories, then the hidden slots unchanged."""
    return [*histories, *[gr.skip()] * (len(chats) - len(histories))]


@shows_errors
def send(prompt: str, shown: list[str], added: dict, system: str, greedy, temperature, top_p, max_new_tokens, seed,
         four_bit, request: gr.Request, *chats):
    if not prompt or not prompt.strip():
        raise gr.Error("Type a prompt first.")
    columns, histories = _columns_and_histories(shown, chats)
    for history in histories:
        history.append({"role": "user", "content": no_remote_images(prompt)})
    for histories in _stream_columns(visitor_of(request), columns, histories, added, system, greedy, temperature,
                                     top_p, max_new_tokens, seed, four_bit):
        yield "", *_all_chats(histories, chats)


@shows_errors
def regenerate(shown: list[str], added: dict, system: str, greedy, temperature, top_p, max_new_tokens, seed,
               four_bit, request: gr.Request, *chats):
    """Answer each column's last prompt again, in place of its last answer."""
    columns, histories = _columns_and_histories(shown, chats)
    for history in histories:
        while history and history[-1]["role"] == "assistant":
            history.pop()
    if not any(histories):
        raise gr.Error("Nothing to regenerate yet: send a prompt first.")
    if not all(histories):
        raise gr.Error("A column has no prompt to answer (it was added after the last one): send a new prompt.")
    for histories in _stream_columns(visitor_of(request), columns, histories, added, system, greedy, temperature,
                                     top_p, max_new_tokens, seed, four_bit):
        yield _all_chats(histories, chats)


@shows_errors
def release(request: gr.Request) -> str:
    require_training(request, "release the chat model")
    released = SERVICE.release()
    return ("Released the model from memory. " if released else "") + SERVICE.status()


@shows_errors
def compare_api(prompt: str, adapters: str, system: str, max_new_tokens: float | None, request: gr.Request):
    """For gradio_client. adapters: run ids or adapter refs, comma separated (empty: the newest run's adapter).
    Returns {"base": answer, <run id or ref>: answer, ...}."""
    visitor = visitor_of(request)
    policy().require_chat(visitor)  # first: an outsider learns nothing about the runs here
    if not prompt or not prompt.strip():
        raise gr.Error("prompt is empty")
    limits.check_prompt_characters(len(prompt) + len(system or ""))
    max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    _sampling(True, 0, 1, max_new_tokens, None)  # a bad request is refused before any adapter is looked up
    refs = [a.strip() for a in (adapters or "").split(",") if a.strip()]
    refs = [ref if ":" in ref else f"run:{ref}" for ref in refs]
    if not refs:
        newest = [ref for _, ref in adapter_options({}, visitor)]
        if not newest:
            raise gr.Error("No run has an adapter yet: train one first, or name an adapter.")
        refs = newest[:1]
    if len(refs) > MAX_ADAPTER_COLUMNS:
        raise gr.Error(f"at most {MAX_ADAPTER_COLUMNS} adapters at once, got {len(refs)}")
    columns = [BASE_COLUMN, *refs]
    histories = [[{"role": "user", "content": prompt}] for _ in columns]
    keys = [BASE_COLUMN] + [ref.removeprefix("run:") for ref in refs]
    for histories in _stream_columns(visitor, columns, histories, {}, system, True, 0, 1, max_new_tokens, None,
                                     False):
        yield {key: history[-1]["content"] for key, history in zip(keys, histories)}


# --- held-out evaluation -------------------------------------------------------------------------------------------

@shows_errors
def start_evaluation(run_id: str | None, samples: float | None, request: gr.Request):
    if not run_id:
        raise gr.Error("Pick a run first.")
    require_run(request, run_id, "evaluate")
    samples = int(samples or 0)
    if evaluation.should_run_in_background(run_id):
        evaluation.start_evaluation(run_id, samples)
    else:
        evaluation.evaluate_run(run_id, samples, log=lambda *_: None)
    return show_evaluation(run_id, request)


@shows_errors
def show_evaluation(run_id: str | None, request: gr.Request):
    """The run's last evaluation: figures, sample table and CSV; the timer runs while one is in progress."""
    empty, no_link = pd.DataFrame(columns=list(evaluation.CSV_COLUMNS)), gr.HTML(value="", visible=False)
    if not run_id:
        return "", empty, no_link, gr.Timer(active=False)
    require_run(request, run_id)
    status = evaluation.evaluation_status(run_id)
    if status["status"] == "running":
        return (f"Evaluating run {run_id} in the background…", empty, no_link, gr.Timer(active=True))
    if status["status"] == "failed":
        return (f"The last evaluation of {run_id} failed: {status['message']}", empty, no_link,
                gr.Timer(active=False))
    done = evaluation.read_evaluation(run_id)
    if done is None:
        return (f"Run {run_id} has not been evaluated yet.", empty, no_link, gr.Timer(active=False))
    s = done["summary"]
    figures = (f"**Run {run_id}** on {s['eval_conversations']} held-out conversations ({s['eval_tokens']} scored "
               f"tokens):\n\n| | loss | perplexity |\n|---|---|---|\n"
               f"| base | {s['base_loss']:.4f} | {s['base_perplexity']:.2f} |\n"
               f"| adapted | {s['adapted_loss']:.4f} | {s['adapted_perplexity']:.2f} |")
    csv_copy = download_path(f"phi3lora-{run_id}-evaluation.csv")
    shutil.copyfile(evaluation.evaluation_dir(run_id) / "samples.csv", csv_copy)
    return (figures, pd.DataFrame(done["rows"], columns=list(evaluation.CSV_COLUMNS)), offer(csv_copy, run_id),
            gr.Timer(active=False))


# --- blind A/B --------------------------------------------------------------------------------------------------

def _vote_buttons(active: bool) -> list:
    return [gr.Button(interactive=active)] * 4


@shows_errors
def blind_generate(first: str | None, second: str | None, prompt: str, added: dict, system: str, greedy, temperature,
                   top_p, max_new_tokens, seed, four_bit, request: gr.Request):
    if not first or not second:
        raise gr.Error("Pick two contenders first.")
    if first == second:
        raise gr.Error("Pick two different contenders.")
    if not prompt or not prompt.strip():
        raise gr.Error("Type a prompt first.")
    pair = [first, second]
    random.shuffle(pair)  # the order is the blind part: nothing on the page says which is which until the vote
    histories = [[{"role": "user", "content": prompt}] for _ in pair]
    hidden = "Answers are being written…"
    for histories in _stream_columns(visitor_of(request), pair, histories, added, system, greedy, temperature, top_p,
                                     max_new_tokens, seed, four_bit):
        yield None, histories[0][-1]["content"], histories[1][-1]["content"], hidden, *_vote_buttons(False)
    pair_id = votes.new_pair(_run_id(pair[0]), _run_id(pair[1]), prompt)
    yield {"id": pair_id, "shown": pair}, gr.skip(), gr.skip(), "Which answer is better?", *_vote_buttons(True)


def _contender_name(ref: str) -> str:
    return "the base model" if ref == BASE_COLUMN else ref.removeprefix("run:")


def _run_id(ref: str) -> str:
    """The vote key: a run id, or the base (uploaded and hub adapters have no run to store votes with)."""
    return ref.removeprefix("run:") if ref.startswith("run:") else votes.BASE_CONTENDER if ref == BASE_COLUMN else ""


def vote_for(outcome: str):
    """The handler of one vote button."""
    @shows_errors
    def vote(pair: list[str] | None, request: gr.Request):
        return record_vote(pair, outcome, request)
    return vote


def record_vote(pair: dict | None, outcome: str, request: gr.Request):
    if not pair:
        raise gr.Error("Generate a pair of answers first.")
    policy().require_chat(visitor_of(request))
    first, second = pair["shown"]
    stored = votes.record_pair_vote(pair["id"], outcome)  # refused if this pair has had its vote
    lines = [f"**A** was {_contender_name(first)}, **B** was {_contender_name(second)}."]
    if _run_id(first) and _run_id(second):
        lines += [f"Run {run_id}: {votes.win_rate(run_id).describe()}" for run_id in stored]
    else:
        lines.append("Not stored: votes are kept with runs, and an uploaded or hub adapter has none.")
    return None, "\n\n".join(lines), *_vote_buttons(False)
