"""Compare tab, blind A/B: two answers to one prompt, shown as A and B in random order; the vote is stored with
the runs (phi3lora.inference.votes) and counts toward their win rate."""
from __future__ import annotations

import random
from dataclasses import dataclass

import gradio as gr

from ..inference import votes
from ..inference.service import BASE_COLUMN, ChatService
from .common import shows_errors
from .compare_chat import Sampling, chat_queue, contender_name, stream_columns
from .state import handler, input_set, read
from .visitors import policy, visitor_of


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
class BlindForm:
    """What Generate reads: the contenders and the prompt, and the Side by side tab's shared settings."""
    first: str | None
    second: str | None
    prompt: str
    added: dict  # this session's uploaded and hub adapters: ref -> AdapterChoice
    system: str
    sampling: Sampling


def build() -> BlindTab:
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


def wire(blind: BlindTab, service: ChatService, added: gr.State, system: gr.Textbox,
         sampling: dict[str, gr.Component]) -> None:
    """`added`, `system` and the `sampling` inputs (by Sampling's field names) are the Side by side tab's."""
    private = {"api_visibility": "private"}
    components = {"first": blind.contender_a, "second": blind.contender_b, "prompt": blind.prompt, "added": added,
                  "system": system, **sampling}

    def form(values: dict) -> BlindForm:
        got = read(values, components)
        return BlindForm(got["first"], got["second"], got["prompt"], got["added"], got["system"],
                         Sampling(**{name: got[name] for name in sampling}))

    blind.generate_button.click(handler(blind_generate, service, form=form), input_set(components),
                                [blind.pair, blind.answer_a, blind.answer_b, blind.result,
                                 *blind.vote_buttons.values()], **private, **chat_queue())
    for outcome, button in blind.vote_buttons.items():
        button.click(vote_for(outcome), [blind.pair],
                     [blind.pair, blind.result, *blind.vote_buttons.values()], **private)


def _vote_buttons(active: bool) -> list:
    return [gr.Button(interactive=active)] * 4


@shows_errors
def blind_generate(service: ChatService, form: BlindForm, request: gr.Request):
    first, second, prompt = form.first, form.second, form.prompt
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
    for histories in stream_columns(service, visitor_of(request), pair, histories, form.added, form.system,
                                    form.sampling):
        yield None, histories[0][-1]["content"], histories[1][-1]["content"], hidden, *_vote_buttons(False)
    pair_id = votes.new_pair(_run_id(pair[0]), _run_id(pair[1]), prompt)
    yield {"id": pair_id, "shown": pair}, gr.skip(), gr.skip(), "Which answer is better?", *_vote_buttons(True)


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
    lines = [f"**A** was {contender_name(first)}, **B** was {contender_name(second)}."]
    if _run_id(first) and _run_id(second):
        lines += [f"Run {run_id}: {votes.win_rate(run_id).describe()}" for run_id in stored]
    else:
        lines.append("Not stored: votes are kept with runs, and an uploaded or hub adapter has none.")
    return None, "\n\n".join(lines), *_vote_buttons(False)
