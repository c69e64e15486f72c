"""The one thread on which this process computes with its inference models: loading, attaching adapters,
generating, scoring.

Why one thread. torch's CPU operators run on OpenMP (libgomp), which gives every thread that runs them a team of
worker threads of its own, kept for as long as that thread lives. Once a process holds more such OpenMP threads
than it has cores, libgomp lets idle workers sleep at once instead of spinning, and each of the hundreds of
parallel regions of a decoding step then waits for its workers to wake. Measured on this project's machine
(2 cores, torch 2.13, demo model, 64 new tokens, batch of 2): a generate in a fresh thread took 0.17-0.19 s
while no other thread had run torch operators, and 0.34-0.41 s once the main thread had, even 1 s later. A
Gradio app calls in from many threads; with every model computation on this thread, the process holds one team.
It is also what orders that work: one generation at a time, and adapters attached and models dropped only
between generations, never during one.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["in_model_thread", "on_model_thread", "submit_to_model_thread"]

T = TypeVar("T")
_NAME = "phi3lora-model"
_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_NAME)  # its thread starts on the first call


def in_model_thread() -> bool:
    return threading.current_thread().name.startswith(_NAME)


def submit_to_model_thread(fn: Callable[..., T], *args, **kwargs) -> Future:
    """Queue fn(*args, **kwargs) for the model thread; the future holds its result or exception."""
    return _EXECUTOR.submit(fn, *args, **kwargs)


def on_model_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args, **kwargs) run on the model thread (at once when called from it), its result returned here and
    its exception raised here."""
    if in_model_thread():
        return fn(*args, **kwargs)
    return submit_to_model_thread(fn, *args, **kwargs).result()
