"""Compare tab, blind A/B: two answers to one prompt, shown as A and B in random order; the vote is stored with
the runs (phi3lora.inference.votes) and counts toward their win rate."""
from __future__ import annotations

import random
from dataclasses import dataclass

import gradio as gr

from ..inference import votes
from ..policy import limits
from ..policy.limits import DEFAULT_MAX_NEW_TOKENS
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
    answers = (histories[0][-1]["content"], histories[1][-1]["content"])
    pair_id = votes.new_pair(_run_id(pair[0]), _run_id(pair[1]), prompt, form.system, answers)
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
    rules, visitor = policy(), visitor_of(request)
    rules.require_chat(visitor)
    first, second = pair["shown"]
    stored = votes.record_pair_vote(  # refused if this pair has had its vote
        pair["id"], outcome, by_owner=lambda run_id: rules.may_train(visitor) and rules.owns(visitor, run_id))
    lines = [f"**A** was {contender_name(first)}, **B** was {contender_name(second)}."]
    if _run_id(first) and _run_id(second):
        lines += [f"Run {run_id}: {votes.win_rate(run_id).describe()}" for run_id in stored]
    else:
        lines.append("Not stored: votes are kept with runs, and an uploaded or hub adapter has none.")
    return None, "\n\n".join(lines), *_vote_buttons(False)


# --- API: the blind test for gradio_client ---------------------------------------------------------------------

def add_api(service: ChatService) -> None:
    """`/blind_pair` (two greedy answers shown as A and B, and the pair's id) and `/blind_vote` (its one vote)."""
    prompt, system = gr.Textbox(label="prompt", visible=False), gr.Textbox(label="system", visible=False)
    first, second = gr.Textbox(label="contender_1", visible=False), gr.Textbox(label="contender_2", visible=False)
    max_new = gr.Number(label="max_new_tokens", value=DEFAULT_MAX_NEW_TOKENS, precision=0, visible=False)
    pair_out, pair_id, outcome = gr.JSON(visible=False), gr.Textbox(visible=False), gr.Textbox(visible=False)
    vote_out = gr.JSON(visible=False)
    gr.Button(visible=False).click(handler(blind_pair_api, service), [prompt, first, second, system, max_new],
                                   [pair_out], api_name="blind_pair", **chat_queue())
    gr.Button(visible=False).click(blind_vote_api, [pair_id, outcome], [vote_out], api_name="blind_vote")


@shows_errors
def blind_pair_api(service: ChatService, prompt: str, contender_1: str, contender_2: str, system: str,
                   max_new_tokens: float | None, request: gr.Request) -> dict:
    """Contenders: "base" or a run id. Returns {"pair": its id, "A": answer, "B": answer}, in random order; the
    vote (/blind_vote) says who was who."""
    limits.check_prompt_characters(len(prompt or "") + len(system or ""))
    refs = [BASE_COLUMN if (c or "").strip() == votes.BASE_CONTENDER else f"run:{(c or '').strip()}"
            for c in (contender_1, contender_2)]
    sampling = Sampling(greedy=True, temperature=0, top_p=1, seed=None, four_bit=False,
                        max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
    sampling.generate_args()  # a bad request is refused before anything is generated
    answers = None
    for outputs in blind_generate(service, BlindForm(*refs, prompt, {}, system or "", sampling), request):
        if isinstance(outputs[0], dict):  # the last: the pair registered for its vote
            return {"pair": outputs[0]["id"], "A": answers[0], "B": answers[1]}
        answers = outputs[1:3]
    raise gr.Error("no answers were generated")


@shows_errors
def blind_vote_api(pair_id: str, outcome: str, request: gr.Request) -> dict:
    """The one vote on a pair from /blind_pair: "A", "B", "tie" or "both_bad". Returns who was A and B ("base" or
    a run id) and the runs it was stored with."""
    shown = votes.pair_contenders((pair_id or "").strip())
    if shown is None:
        raise gr.Error("this pair of answers has already been voted on, or never was generated: call /blind_pair")
    record_vote({"id": pair_id.strip(), "shown": list(shown)}, outcome, request)
    stored = [run_id for run_id in shown if run_id and run_id != votes.BASE_CONTENDER]
    return {"A": shown[0], "B": shown[1], "stored_with": stored}
