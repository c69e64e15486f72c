"""Base and adapters side by side, streamed: one base model in memory, adapters attached by name, and every
column (each with its own conversation) computed in ONE batched `generate`, text shown token by token.

    sbs = SideBySide("demo")
    sbs.add_adapter("tuned", "runs/identity")
    for texts in sbs.stream([BASE, "tuned"], [conversation_a, conversation_b], max_new_tokens=64):
        print(texts)  # [base text so far, tuned text so far]
    sbs.release()

Columns are adapter names or BASE ("__base__", the plain base); peft's mixed adapter batches route every row
through its own adapter. Prompts differ in length, so they are padded on the left. On the CPU, the linears of
a generate take the form that makes a few rows cost about what one does (inference/few_rows.py). Loading, attaching and
generating all run on the process's one model thread (inference/model_thread.py).

Streaming decodes incrementally: each step decodes only the last few tokens of a row (a window that starts one
decoded chunk back, so that spaces and merges at the seam come out as in a full decode), and holds back a
trailing incomplete UTF-8 character until its last byte arrives (a full decode would show U+FFFD meanwhile).
Where the window holds bytes that are no UTF-8, that step decodes the whole row. At the end, the texts are
compared with one full decode per row, and queued once more where they differ.
"""
from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Queue

import torch
from peft import PeftModel
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..policy import limits
from .adapter_info import BASE, AdapterError, adapter_settings
from .adapters import chat_prompt, load_with_adapters
from ..config import ModelSettings
from .few_rows import few_row_linears
from ..policy.limits import LimitExceeded
from .model_thread import in_model_thread, on_model_thread, submit_to_model_thread
from ..modeling import stop_token_ids

__all__ = ["BASE", "ColumnStreamer", "SideBySide"]

_DONE = object()
_MAX_HELD = 8  # tokens a row's text may wait for (a UTF-8 character has 4 bytes at most); then shown as they are


class ColumnStreamer(BaseStreamer):
    """Receives every row's new token each step and queues the decoded text of every row so far.

    The first `put` is the prompt and is skipped. A row's text ends at its first stop token: what generate
    appends after it (padding, while other rows go on) is never shown. Decoding is incremental (see the module
    docstring): a step costs a few tokens' decode per row, however long the answers grow."""

    def __init__(self, tokenizer, rows: int, stop_ids: list[int]):
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.done = [False] * rows
        self.queue: Queue = Queue()
        self._prompt_seen = False
        self._text = [""] * rows  # decode(tokens[:read]) of each row
        self._prefix = [0] * rows  # a row's decode window starts here, one chunk of context before `read`
        self._read = [0] * rows  # the tokens before this are in _text
        self._context = [""] * rows  # decode(tokens[prefix:read])
        self._last = [""] * rows  # the texts queued last

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        step = value.reshape(-1).tolist()  # one new token per row
        for row, token in enumerate(step):
            if self.done[row]:
                continue
            if token in self.stop_ids:
                self.done[row] = True
            else:
                self.tokens[row].append(token)
                self._advance(row)
        self._last = [text.strip() for text in self._text]
        self.queue.put(self._last)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _advance(self, row: int) -> None:
        """Append to the row's text what its tokens after `read` add, decoded with the context before them."""
        tokens, prefix, read, context = self.tokens[row], self._prefix[row], self._read[row], self._context[row]
        window = self._decode(tokens[prefix:])
        if (window.endswith("\ufffd") or len(window) <= len(context)) and len(tokens) - read <= _MAX_HELD:
            return  # an incomplete UTF-8 character, or nothing visible yet (a skipped special token): wait
        if "\ufffd" not in window and window.startswith(context):
            self._text[row] += window[len(context):]
        else:  # bytes that are no UTF-8 (a byte-fallback decoder then turns its whole run of bytes, earlier ones
            # too, into U+FFFD), or new tokens that changed how the context decodes: decode the whole row
            self._text[row] = self._decode(tokens)
        self._prefix[row], self._read[row] = read, len(tokens)
        self._context[row] = self._decode(tokens[read:])

    def end(self) -> None:
        exact = self.texts()  # one full decode per row, so that the last texts queued are exactly the answers
        if exact != self._last:  # e.g. the answer ended inside a UTF-8 character that was being held back
            self._last = exact
            self.queue.put(exact)
        self.queue.put(_DONE)

    def texts(self) -> list[str]:
        """Every row's text so far, decoded in full."""
        return [self._decode(t).strip() for t in self.tokens]


class _Cancelled(StoppingCriteria):
    """Stops generate once the reader of the stream has gone away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class PromptTooLong(LimitExceeded):
    """A conversation over the prompt-token limit: one long prefill would stall every chat behind it."""


def _check_prompt_tokens(lengths: list[int], config, max_new_tokens: int) -> None:
    context = getattr(config, "max_position_embeddings", None) or limits.DEFAULT_MAX_PROMPT_TOKENS + max_new_tokens
    most = limits.max_prompt_tokens(context, max_new_tokens)
    longest = max(lengths)
    if longest > most:
        raise PromptTooLong(f"the conversation is {longest} tokens, over this server's limit of {most} "
                            "(PHI3LORA_MAX_PROMPT_TOKENS): shorten the prompt or the system prompt, or Clear the chat")


class SideBySide:
    """One base model (loaded on first use) with any number of adapters attached to it by name."""

    def __init__(self, base_model: str | None = None, settings: ModelSettings | None = None):
        self.base_model = base_model
        self.settings = settings
        self._adapters: dict[str, Path] = {}
        self._model = None
        self._tokenizer = None

    # ---- model and adapters ---------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self):
        self._ensure_loaded()
        return self._model

    @property
    def tokenizer(self):
        self._ensure_loaded()
        return self._tokenizer

    def _ensure_loaded(self) -> None:
        if self._model is None:
            on_model_thread(self._load)

    def _load(self) -> None:  # on the model thread, one call after another: first uses that arrive together load once
        if self._model is None:
            model, self._tokenizer = load_with_adapters(self.base_model, dict(self._adapters), self.settings)
            self._model = model  # last: a model that is set comes with its tokenizer

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Attach the adapter in `path` under `name`, to the base already in memory when there is one."""
        if not name or name == BASE:
            raise AdapterError(f"{name!r} cannot name an adapter: it is reserved for the plain base")
        if name in self._adapters:
            raise AdapterError(f"an adapter named {name!r} is already attached ({self._adapters[name]})")
        # raises AdapterError on a folder that is not an adapter; whoever picked the adapter checked its base
        trained_on, settings = adapter_settings(path, check_base=False)
        if not self._adapters and self._model is None:
            # Nothing loaded yet: the first adapter's base and load settings are the default
            self.base_model = self.base_model or trained_on
            self.settings = self.settings or settings
        on_model_thread(self._attach, name, Path(path))

    def _attach(self, name: str, path: Path) -> None:
        # on the model thread: between generations, never in one (its rows would change adapters mid-answer)
        if self._model is not None:
            if isinstance(self._model, PeftModel):
                self._model.load_adapter(str(path), adapter_name=name)
            else:
                self._model = PeftModel.from_pretrained(self._model, str(path), adapter_name=name)
            self._model.eval()
        self._adapters[name] = path

    def release(self) -> None:
        """Drop the model and free its memory, once the generations already asked for have ended; the next use
        loads it again, with the same adapters."""
        on_model_thread(self._drop)

    def _drop(self) -> None:
        self._model = None
        self._tokenizer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- generation -----------------------------------------------------------------------------------------
    def stream(self, columns: list[str], conversations: list[list[dict]], max_new_tokens: int = limits.DEFAULT_MAX_NEW_TOKENS,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, limit_prompt: bool = False,
               **generate_kwargs) -> Iterator[list[str]]:
        """Yield, after every generated token, the text so far of every column (one batched generate).

        `columns[i]` (an adapter name or BASE) answers `conversations[i]`. Greedy when temperature == 0;
        with a seed, sampling is repeatable. `limit_prompt` refuses conversations over the server's prompt limit
        (limits.max_prompt_tokens) before generating. Extra keyword arguments go to `generate` (e.g. min_new_tokens)."""
        if len(columns) != len(conversations):
            raise ValueError(f"{len(columns)} columns but {len(conversations)} conversations")
        if not columns:
            return
        if in_model_thread():  # its generate would wait behind this very call for ever
            raise RuntimeError("SideBySide.stream cannot be read on the model thread; call it from another one")
        unknown = [c for c in columns if c != BASE and c not in self._adapters]
        if unknown:
            raise AdapterError(f"no adapter named {', '.join(map(repr, unknown))}; attached: {self.adapters or 'none'}")
        model, tokenizer = self.model, self.tokenizer
        prompts = [chat_prompt(tokenizer, c) for c in conversations]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        if limit_prompt:
            _check_prompt_tokens(inputs["attention_mask"].sum(dim=1).tolist(), model.config, max_new_tokens)
        stops = stop_token_ids(tokenizer)
        streamer = ColumnStreamer(tokenizer, len(columns), stops)
        cancel = threading.Event()
        sampling = temperature > 0
        kwargs = dict(
            **inputs, max_new_tokens=max_new_tokens, do_sample=sampling,
            eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
        )
        if sampling:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=None)
        else:  # the demo's generation_config may carry sampling settings that greedy search would warn about
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(generate_kwargs)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                if cancel.is_set():  # the reader left while this waited for its turn
                    return
                with torch.inference_mode():
                    # the model as it is now: an adapter attached since `model` was read has wrapped the base
                    # in a PeftModel and injected its layers, so every row must be routed, the base's included
                    current = self._model or model  # (or released meanwhile: the one read is still whole)
                    if isinstance(current, PeftModel):
                        kwargs["adapter_names"] = list(columns)
                    if seed is not None:
                        torch.manual_seed(seed)
                    with few_row_linears(current):
                        current.generate(**kwargs)
            except BaseException as error:  # noqa: BLE001 - re-raised in the reader's thread
                failure.append(error)
            finally:
                streamer.end()

        generation = submit_to_model_thread(run)
        try:
            while (item := streamer.queue.get()) is not _DONE:
                yield item
        finally:
            cancel.set()  # the reader stopped early (or we are done): let generate end at its next step
            generation.result()
        if failure:
            raise failure[0]

    def generate(self, columns: list[str], conversations: list[list[dict]], max_new_tokens: int = limits.DEFAULT_MAX_NEW_TOKENS,
                 **kwargs) -> list[str]:
        """The final texts of `stream` (same arguments)."""
        texts = [""] * len(columns)
        for texts in self.stream(columns, conversations, max_new_tokens, **kwargs):
            pass
        return texts
