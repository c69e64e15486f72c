"""Compare tab, chatting: the base and adapters answering one conversation side by side, streamed from one batched
generate by the app's ChatService (AppState.chat), and the `/compare` API. The blind A/B test streams through here
too (compare_blind.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..policy import limits
from ..policy.access import Visitor
from ..inference.service import BASE_COLUMN, AdapterChoice, ChatService, run_adapters
from ..runs.registry import RunNotFound, not_found
from .common import shows_errors
from .safe_text import no_remote_images
from .visitors import policy, require_training, visitor_of

MAX_ADAPTER_COLUMNS = 3


def max_new_tokens_limit() -> int:
    return limits.limit("PHI3LORA_MAX_NEW_TOKENS")


def chat_queue() -> dict:
    """Every event that generates shares one queue: at most $PHI3LORA_CHAT_CONCURRENCY generating at once."""
    return {"concurrency_limit": limits.limit("PHI3LORA_CHAT_CONCURRENCY"), "concurrency_id": "chat"}


@dataclass
class Sampling:
    """The sampling settings every column shares (and the 4-bit choice of the base they load)."""
    greedy: bool
    temperature: float
    top_p: float
    max_new_tokens: float
    seed: float | None
    four_bit: bool = False

    def generate_args(self) -> dict:
        limit, max_new_tokens = max_new_tokens_limit(), self.max_new_tokens
        if not max_new_tokens or not 1 <= max_new_tokens <= limit:
            raise gr.Error(f"max new tokens must be between 1 and {limit} (the server's limit, "
                           f"PHI3LORA_MAX_NEW_TOKENS), got {max_new_tokens}")
        return {"max_new_tokens": int(max_new_tokens), "temperature": 0.0 if self.greedy else float(self.temperature),
                "top_p": float(self.top_p), "seed": None if self.seed is None else int(self.seed)}


@dataclass
class ChatForm:
    """What a chat event (send, regenerate) reads from the Side by side tab."""
    shown: list[str]  # the adapter refs the adapter columns show
    added: dict  # this session's uploaded and hub adapters: ref -> AdapterChoice
    system: str
    sampling: Sampling
    chats: list  # every Chatbot's history, the base's first
    prompt: str = ""


# --- which adapters -----------------------------------------------------------------------------------------------

def adapter_options(added: dict[str, AdapterChoice], visitor: Visitor) -> list[tuple[str, str]]:
    """(label, ref) for every adapter the visitor may pick: this session's additions, then runs, newest first."""
    rules = policy()
    runs_allowed = [c for c in run_adapters() if rules.may_chat_with(visitor, c.ref.removeprefix("run:"))]
    return [(c.label, c.ref) for c in added.values()] + [(c.label, c.ref) for c in runs_allowed]


def contender_name(ref: str) -> str:
    return "the base model" if ref == BASE_COLUMN else ref.removeprefix("run:")


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


def stream_columns(service: ChatService, visitor: Visitor, columns: list[str], histories: list[list[dict]],
                   added: dict, system: str, sampling: Sampling):
    """Stream answers into histories (each ending with the user's turn); yields the histories after each token."""
    rules = policy()
    rules.require_chat(visitor)
    generate_args = sampling.generate_args()
    for ref in columns:
        if ref.startswith("run:") and not rules.may_chat_with(visitor, ref.removeprefix("run:")):
            raise RunNotFound(not_found(ref.removeprefix("run:")))  # as if it did not exist
    adapters = service.resolve([c for c in columns if c != BASE_COLUMN], added)
    head = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    conversations = [head + _turns(history) for history in histories]
    for history in histories:
        history.append({"role": "assistant", "content": ""})
    yield histories
    for texts in service.stream(adapters, columns, conversations, load_in_4bit=sampling.four_bit, **generate_args):
        for history, text in zip(histories, texts):
            history[-1]["content"] = no_remote_images(text)  # a model can write an image link too
        yield histories


def _columns_and_histories(form: ChatForm) -> tuple[list[str], list[list[dict]]]:
    columns = [BASE_COLUMN, *form.shown]
    return columns, [list(form.chats[i] or []) for i in range(len(columns))]


def _all_chats(histories: list[list[dict]], chats: list) -> list:
    """Every Chatbot's new value: the streamed histories, then the hidden slots unchanged."""
    return [*histories, *[gr.skip()] * (len(chats) - len(histories))]


@shows_errors
def send(service: ChatService, form: ChatForm, request: gr.Request):
    prompt = form.prompt
    if not prompt or not prompt.strip():
        raise gr.Error("Type a prompt first.")
    columns, histories = _columns_and_histories(form)
    for history in histories:
        history.append({"role": "user", "content": no_remote_images(prompt)})
    for histories in stream_columns(service, visitor_of(request), columns, histories, form.added, form.system,
                                    form.sampling):
        yield "", *_all_chats(histories, form.chats)


@shows_errors
def regenerate(service: ChatService, form: ChatForm, request: gr.Request):
    """Answer each column's last prompt again, in place of its last answer."""
    columns, histories = _columns_and_histories(form)
    for history in histories:
        while history and history[-1]["role"] == "assistant":
            history.pop()
    if not any(histories):
        raise gr.Error("Nothing to regenerate yet: send a prompt first.")
    if not all(histories):
        raise gr.Error("A column has no prompt to answer (it was added after the last one): send a new prompt.")
    for histories in stream_columns(service, visitor_of(request), columns, histories, form.added, form.system,
                                    form.sampling):
        yield _all_chats(histories, form.chats)


@shows_errors
def release(service: ChatService, request: gr.Request) -> str:
    require_training(request, "release the chat model")
    released = service.release()
    return ("Released the model from memory. " if released else "") + service.status()


@shows_errors
def compare_api(service: ChatService, prompt: str, adapters: str, system: str, max_new_tokens: float | None,
                request: gr.Request):
    """For gradio_client. adapters: run ids or adapter refs, comma separated (empty: the newest run's adapter).
    Returns {"base": answer, <run id or ref>: answer, ...}."""
    visitor = visitor_of(request)
    policy().require_chat(visitor)  # first: an outsider learns nothing about the runs here
    if not prompt or not prompt.strip():
        raise gr.Error("prompt is empty")
    limits.check_prompt_characters(len(prompt) + len(system or ""))
    sampling = Sampling(greedy=True, temperature=0, top_p=1, max_new_tokens=max_new_tokens or limits.DEFAULT_MAX_NEW_TOKENS,
                        seed=None, four_bit=False)
    sampling.generate_args()  # a bad request is refused before any adapter is looked up
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
    for histories in stream_columns(service, visitor, columns, histories, {}, system, sampling):
        yield {key: history[-1]["content"] for key, history in zip(keys, histories)}
