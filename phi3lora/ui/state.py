"""The app's state, in one object that `build_app` creates and hands to each tab, whose handlers close over what
they need of it; and `handler`, which gives a handler its share of that state (and its typed form) as Gradio
calls it. Nothing in phi3lora.ui keeps state at module level: two apps built in one process share nothing."""
from __future__ import annotations

import functools
import inspect
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from ..inference.service import ChatService
from ..tokenizer_loading import load_tokenizer

MAX_CACHED_TOKENIZERS = 4  # each holds its whole vocabulary: keep the few in use, drop the least recently used


class TokenizerCache:
    """The Data tab's tokenizers, the few most recently used. Read-only once loaded, so one copy serves every
    visitor; one load at a time, so two visitors asking for the same one load it once. A failed load is not kept."""

    def __init__(self, size: int = MAX_CACHED_TOKENIZERS):
        self.size = size
        self._held: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name_or_path: str):
        with self._lock:
            if name_or_path in self._held:
                self._held.move_to_end(name_or_path)
                return self._held[name_or_path]
            tokenizer = load_tokenizer(name_or_path)
            self._held[name_or_path] = tokenizer
            while len(self._held) > self.size:
                self._held.popitem(last=False)
            return tokenizer

    def clear(self) -> None:
        with self._lock:
            self._held.clear()


@dataclass
class AppState:
    """What the app holds for every visitor, for as long as it runs (a visitor's own state is in gr.State)."""
    chat: ChatService = field(default_factory=ChatService)  # one base model in memory, loaded by the first message
    tokenizers: TokenizerCache = field(default_factory=TokenizerCache)


def handler(fn: Callable, *given: Any, form: Callable[[dict], Any] | None = None) -> Callable:
    """`fn` as a Gradio event handler, with its first arguments `given` (its share of the AppState). With `form`,
    the event's inputs are a set of components: Gradio passes one dict keyed by component, and `fn` gets
    form(that dict), its typed form object, instead.

    Not functools.partial: Gradio finds the gr.Request parameter by the handler's type hints, and streams only
    from a generator function; a partial has neither. This keeps both, and the signature of the rest."""
    parameters = list(inspect.signature(fn).parameters.values())[len(given):]

    def arguments(args: tuple) -> tuple:
        if form is not None:
            args = (form(args[0]), *args[1:])
        return (*given, *args)

    if inspect.isgeneratorfunction(fn):
        def bound(*args, **kwargs):
            yield from fn(*arguments(args), **kwargs)
    else:
        def bound(*args, **kwargs):
            return fn(*arguments(args), **kwargs)
    functools.update_wrapper(bound, fn)
    bound.__signature__ = inspect.Signature(parameters)
    return bound


def read(values: dict, components: dict[str, gr.Component | list[gr.Component]]) -> dict[str, Any]:
    """A handler's dict of values (keyed by component) by name: a list of components gives the list of their values."""
    return {name: [values[c] for c in component] if isinstance(component, list) else values[component]
            for name, component in components.items()}


def input_set(components: dict[str, gr.Component | list[gr.Component]]) -> set[gr.Component]:
    """The set of components to give an event as its inputs (Gradio then passes one dict), for `read`."""
    found: set[gr.Component] = set()
    for component in components.values():
        found.update(component if isinstance(component, list) else [component])
    return found
