"""Chatting with base and adapters in the app: which adapters can be picked, and the one model in memory.

    service = ChatService()
    choices = service.resolve(["run:20261123-170102-a1b2c3"])        # or "upload:NAME", "hub:OWNER/NAME"
    for texts in service.stream(choices, [BASE_COLUMN, choices[0].ref], conversations, max_new_tokens=64):
        ...                                                          # one text per column, token by token

Adapters come from finished runs (completed or cancelled), from an uploaded adapter zip, or from the hub.
`ChatService` keeps at most one base model loaded (a `SideBySide`), loads it only when a chat asks for it,
refuses to load it when memory is short (naming who holds the GPU), and drops it when released, when idle, or
when another user of the GPU asks for it (tasks/gpu_memory.py: a training run, an evaluation of another base); it
lends it to an evaluation of the same base (`lend`).
"""
from __future__ import annotations

import gc
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from . import adapter_zip
from ..runs import lifecycle
from ..policy import limits
from .. import settings as env_settings  # "settings" names a model's settings here
from ..policy.allowed_models import BaseModelNotAllowed
from .adapter_info import BASE, AdapterError, adapter_settings
from ..config import ModelSettings
from ..errors import UserError
from ..base_model import choose_base_model
from ..tasks import failures, gpu_memory, machine

if TYPE_CHECKING:
    from .engine import SideBySide

BASE_COLUMN = "base"
ADAPTER_ZIP_MEMBERS = adapter_zip.ADAPTER_FILES  # all we ever extract or fetch
LOCAL_UPLOADER = "local"  # whose uploads they are when no visitor is named (the CLI, tests)
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
RELEASE_POLL_SECONDS = 1.0  # how often a loaded model looks for a release request (tasks/gpu_memory.py)


class ChatMemoryError(UserError, MemoryError):
    """Not enough memory to load or run the chat model; the message says how much and what to try."""


@dataclass(frozen=True)
class AdapterChoice:
    ref: str  # "run:<id>", "upload:<name>" or "hub:<owner/name>": what the UI and the API pass around
    label: str  # what a person sees
    path: Path
    base_model: str | None
    settings: ModelSettings

    @property
    def adapter_name(self) -> str:
        """The name peft knows it by (module names allow no dots or slashes)."""
        return re.sub(r"\W", "_", self.ref)


# --- where adapters come from --------------------------------------------------------------------------------

def run_adapters() -> list[AdapterChoice]:
    """Adapters of completed and cancelled runs, newest first."""
    choices = []
    for info in lifecycle.list_runs():
        if info.adapter and info.status in (machine.COMPLETED, machine.CANCELLED):
            choices.append(_run_choice(info))
    return choices


def _run_choice(info: lifecycle.RunInfo) -> AdapterChoice:
    base, settings = adapter_settings(info.adapter, check_base=False)  # trained here: its base was checked then
    label = f"{info.id} · {info.method} · {Path(info.dataset).name} · {info.status}"
    if info.lineage and info.lineage.get("parent_run"):  # a DPO run: beside its parent, named as its child
        label += f" · from {info.lineage['parent_run']}"
    return AdapterChoice(f"run:{info.id}", label, Path(info.adapter), base, settings)


def import_adapter_zip(zip_path: str | Path, owner_key: str = LOCAL_UPLOADER) -> AdapterChoice:
    """Unpack an adapter zip (PEFT layout: adapter_config.json + adapter_model.safetensors, optionally our
    config.yaml) into the folder of the visitor `owner_key` (access.Visitor.owner_key). Only those files are
    extracted, streamed under caps; see adapter_zip.py for the caps, the quota and how long uploads are kept."""
    target = adapter_zip.unpack(zip_path, owner_key)
    base, settings = adapter_settings(target)
    return AdapterChoice(f"upload:{target.name}", f"{Path(zip_path).name} (uploaded)", target, base, settings)


def download_hub_adapter(repo_id: str) -> AdapterChoice:
    """Fetch an adapter from the hub (safetensors and its config only). The weights are fetched only when the
    hub's size for them is within what the adapter can weigh (adapter_zip.weights_cap, from its config)."""
    repo_id = repo_id.strip()
    if not HUB_REPO_ID.match(repo_id):
        raise AdapterError(f"{repo_id!r} is not a hub repository id (they look like owner/name)")
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        sizes = _hub_sizes(huggingface_hub.HfApi(), repo_id)
        config = Path(huggingface_hub.hf_hub_download(repo_id, "adapter_config.json"))
        base, _ = adapter_settings(config.parent)
        cap = adapter_zip.weights_cap(adapter_zip.read_adapter_config(config.parent, repo_id), base, owner=None)
        if sizes[adapter_zip.WEIGHTS] > cap.bytes:
            raise cap.refuse(repo_id, adapter_zip.WEIGHTS, verb="weighs")
        folder = huggingface_hub.snapshot_download(repo_id, allow_patterns=list(ADAPTER_ZIP_MEMBERS[:2]))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise AdapterError(f"cannot fetch {repo_id}: the hub cannot be reached from this server") from None
    except HfHubHTTPError as error:
        raise AdapterError(f"cannot fetch {repo_id} from the hub: {str(error).splitlines()[0]}") from None
    base, settings = adapter_settings(folder)
    return AdapterChoice(f"hub:{repo_id}", f"{repo_id} (hub)", Path(folder), base, settings)


def _hub_sizes(api, repo_id: str) -> dict[str, int]:
    """The hub's sizes of the adapter's two files, refusing a repository without them or a config too long."""
    entries = api.get_paths_info(repo_id, list(ADAPTER_ZIP_MEMBERS[:2]))
    sizes = {entry.path: getattr(entry, "size", None) for entry in entries}  # a folder of that name has no size
    if not isinstance(sizes.get(adapter_zip.WEIGHTS), int):
        raise AdapterError(f"{repo_id} has no adapter_model.safetensors (only safetensors adapters are loaded)")
    if not isinstance(sizes.get("adapter_config.json"), int):
        raise AdapterError(f"{repo_id} is not a PEFT adapter: adapter_config.json missing")
    if sizes["adapter_config.json"] > adapter_zip.SMALL_FILE_CAP.bytes:
        raise adapter_zip.SMALL_FILE_CAP.refuse(repo_id, "adapter_config.json", verb="weighs")
    return sizes


# --- memory --------------------------------------------------------------------------------------------------

def free_memory() -> tuple[int, str]:
    """(bytes free, where) on the device the chat model would load on; $PHI3LORA_CHAT_MEMORY_GB caps it. A GPU's
    free memory is the GPU-memory owner's (tasks/gpu_memory.py), so a simulated one counts too."""
    gpu = gpu_memory.device_memory()
    free, where = (gpu[0], "GPU") if gpu is not None else (psutil.virtual_memory().available, "CPU")
    cap = env_settings.get_float("PHI3LORA_CHAT_MEMORY_GB")
    if cap is not None:
        free = min(free, int(cap * 1024**3))
    return free, where


def check_memory(name_or_path: str, settings: ModelSettings) -> int | None:
    """Refuse to load the chat model where it would not fit, naming what holds the memory; returns the bytes it
    reserves (weights, activations and the KV cache of a few short answers), None when its size is unknown."""
    weights = gpu_memory.model_bytes(name_or_path, settings.dtype, settings.load_in_4bit)
    if weights is None:
        return None
    needed = int(weights * gpu_memory.HEADROOM["chat"])
    free, where = free_memory()
    if needed <= free:
        return needed
    holders = gpu_memory.holders() if where == "GPU" else []
    training = any(h.kind == "train" for h in holders)
    hint = ("wait for the training run to finish" if training else "free some memory") + (
        ", or load the base in 4-bit (the \"4-bit base\" box)" if not settings.load_in_4bit else "")
    held = "; ".join(h.describe() for h in holders)
    raise ChatMemoryError(
        f"Not enough {where} memory to load {Path(name_or_path).name} for chat: it needs about "
        f"{needed / 1024**3:.2f} GB and {free / 1024**3:.2f} GB is free"
        + (f" (held by {held})" if held else "") + f". Try again later: {hint}.")


def side_by_side(base_model: str, settings: ModelSettings) -> SideBySide:
    """A new engine, not loaded yet. Its module imports torch, transformers and peft: they load with the first
    chat, not with the app, whose page comes up that much sooner (a Space's cold start)."""
    from .engine import SideBySide

    return SideBySide(base_model, settings)


# --- one comparison, for the CLI -----------------------------------------------------------------------------

def compare(adapter_dir: str | Path, prompt: str, base_model: str | None = None, max_new_tokens: int = limits.DEFAULT_MAX_NEW_TOKENS,
            system: str | None = None) -> dict[str, str]:
    """{"base": ..., "adapted": ...}: greedy answers of the base and of base + adapter, in one mixed batch.
    The base is `base_model`, else the one the adapter names, which must then be on the allow-list."""
    try:
        trained_on, settings = adapter_settings(adapter_dir, check_base=not base_model)
    except BaseModelNotAllowed as error:
        raise BaseModelNotAllowed(f"{error}; or pass --model to name the base yourself") from None
    engine = side_by_side(base_model or trained_on, settings)
    engine.add_adapter("adapted", adapter_dir)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    base, adapted = engine.generate([BASE, "adapted"], [messages, messages], max_new_tokens)
    return {"base": base, "adapted": adapted}


# --- the model in memory -------------------------------------------------------------------------------------

def idle_seconds() -> float:
    return env_settings.get_float("PHI3LORA_CHAT_IDLE_MINUTES") * 60


class ChatService:
    """At most one base model in memory, with every adapter asked for attached to it by name."""

    def __init__(self):
        self._engine: SideBySide | None = None
        self._key: tuple | None = None
        self._attached: dict[str, str] = {}  # adapter name in peft -> its ref
        self._lock = threading.RLock()  # engine changes; generation itself is serialised by SideBySide
        self._last_used = time.monotonic()
        self._busy = 0
        self._watcher: threading.Thread | None = None
        self._hold: gpu_memory.Hold | None = None  # its record in the GPU-memory ledger while a model is loaded

    # ---- resolving what the UI asked for
    def resolve(self, refs: list[str], extra: dict[str, AdapterChoice] | None = None) -> list[AdapterChoice]:
        """AdapterChoices for refs; `extra` holds uploaded and hub adapters this session added."""
        known = {choice.ref: choice for choice in (extra or {}).values()}
        choices = []
        for ref in refs:
            if ref in known:
                choices.append(known[ref])
            elif ref.startswith("run:"):
                info = lifecycle.run_info(ref[4:])
                if not info.adapter or info.status not in (machine.COMPLETED, machine.CANCELLED):
                    raise AdapterError(f"run {info.id} has no adapter to chat with ({info.status})")
                choices.append(_run_choice(info))
            else:
                raise AdapterError(f"unknown adapter {ref!r}: pick a run's adapter, or add the adapter again")
        return choices

    # ---- loading and releasing
    def status(self) -> str:
        with self._lock:
            if self._engine is None or not self._engine.loaded:
                return "No model in memory: it loads with the first message."
            shown = sorted(ref.removeprefix("run:") for ref in self._attached.values())
            adapters = f"with adapters {', '.join(shown)}" if shown else "(base only)"
            return (f"In memory: {Path(self._key[0]).name} {adapters}. It is released after "
                    f"{idle_seconds() / 60:g} idle minutes, or now with Release.")

    def release(self) -> bool:
        """Drop the model from memory. Returns whether one was loaded."""
        with self._lock:
            engine, self._engine, self._key = self._engine, None, None
            self._attached = {}
            hold, self._hold = self._hold, None
        if hold is not None:
            hold.end()
        if engine is None:
            return False
        was_loaded = engine.loaded
        engine.release()
        gc.collect()
        return was_loaded

    def _engine_for(self, adapters: list[AdapterChoice], load_in_4bit: bool) -> SideBySide:
        base, settings, key = _model_key(adapters, load_in_4bit)
        with self._lock:
            if self._key != key:
                self.release()
                self._engine, self._key = side_by_side(base, settings), key
            engine = self._engine
            if not engine.loaded:
                reserved = check_memory(base, settings)
                self._hold_gpu(f"the chat model ({Path(base).name}, in the web app's Compare tab)", reserved)
            self._attach(engine, adapters)
            self._last_used = time.monotonic()
            self._start_idle_watch()
            return engine

    def _attach(self, engine: SideBySide, adapters: list[AdapterChoice]) -> None:
        for choice in adapters:
            if choice.adapter_name not in self._attached:
                engine.add_adapter(choice.adapter_name, choice.path)
                self._attached[choice.adapter_name] = choice.ref

    def _hold_gpu(self, what: str, reserved: int | None) -> None:
        """Record the model in the GPU-memory ledger (where there is a GPU to share), releasable when idle."""
        if self._hold is not None:
            self._hold.end()
            self._hold = None
        if gpu_memory.device_memory() is not None:
            self._hold = gpu_memory.hold("chat", what, reserved, releasable=True)

    @contextmanager
    def lend(self, choice: AdapterChoice) -> Iterator[tuple[SideBySide, str] | None]:
        """The model in memory with `choice`'s adapter attached, as (engine, adapter name), when it is loaded on the
        base `choice` needs with the same settings (an evaluation then needs no second copy); else None. Not
        released while lent."""
        *_, key = _model_key([choice], load_in_4bit=False)
        with self._lock:
            lent = self._engine if self._engine is not None and self._engine.loaded and self._key == key else None
            if lent is not None:
                self._attach(lent, [choice])
                self._busy += 1
        try:
            yield (lent, choice.adapter_name) if lent is not None else None
        finally:
            if lent is not None:
                with self._lock:
                    self._busy -= 1
                    self._last_used = time.monotonic()
                self._release_if_asked()

    def _release_if_asked(self) -> bool:
        """Let go of the model when another user of the GPU asked for it (tasks/gpu_memory.py) and no answer is
        being generated; returns whether it did."""
        with self._lock:
            if self._busy or self._hold is None or not self._hold.release_requested():
                return False
            self.release()
            return True

    def _start_idle_watch(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._release_when_idle, name="chat-idle-release", daemon=True)
            self._watcher.start()

    def _release_when_idle(self) -> None:
        while True:
            time.sleep(min(RELEASE_POLL_SECONDS, idle_seconds() / 4))
            if self._release_if_asked():
                return
            with self._lock:
                if self._engine is None:
                    return
                if self._busy == 0 and time.monotonic() - self._last_used > idle_seconds():
                    self.release()
                    return

    # ---- chatting
    def stream(self, adapters: list[AdapterChoice], columns: list[str], conversations: list[list[dict]],
               load_in_4bit: bool = False, **sampling) -> Iterator[list[str]]:
        """Texts of every column after each new token. A column is BASE_COLUMN or the ref of one of `adapters`."""
        for conversation in conversations:  # before any model loads: a huge text is refused untokenised
            limits.check_prompt_characters(sum(len(str(m.get("content", ""))) for m in conversation))
        names = {choice.ref: choice.adapter_name for choice in adapters}
        unknown = [c for c in columns if c != BASE_COLUMN and c not in names]
        if unknown:
            raise AdapterError(f"no adapter {', '.join(unknown)} among those picked")
        engine = self._engine_for(adapters, load_in_4bit)
        routed = [BASE if c == BASE_COLUMN else names[c] for c in columns]
        with self._lock:
            self._busy += 1
        try:
            yield from engine.stream(routed, conversations, limit_prompt=True, **sampling)
        except Exception as error:
            if not failures.is_out_of_memory(error):
                raise
            self.release()
            others = gpu_memory.others_text(exclude_pid=os.getpid())
            raise ChatMemoryError("Out of memory while generating: the chat model was released to free it"
                                  + (f" (the GPU is also held by {others})" if others else "")
                                  + ". Try fewer columns, fewer new tokens, or the 4-bit base.") from None
        finally:
            with self._lock:
                self._busy -= 1
                self._last_used = time.monotonic()
            self._release_if_asked()  # a run that waits for the GPU need not wait for the idle timer


def _model_key(adapters: list[AdapterChoice], load_in_4bit: bool) -> tuple[str, ModelSettings, tuple]:
    """(base, load settings, key) of the model these adapters need; one key, one model in memory."""
    bases = {_base_of(choice) for choice in adapters} or {choose_base_model(None).name_or_path}
    if len(bases) > 1:
        raise AdapterError("these adapters were trained on different base models ("
                           + ", ".join(sorted(Path(b).name for b in bases)) + "): compare adapters of one base")
    base = bases.pop()
    settings = (adapters[0].settings if adapters else ModelSettings()).model_copy(
        update={"base_model": base,
                "load_in_4bit": bool(load_in_4bit or (adapters and adapters[0].settings.load_in_4bit))})
    return base, settings, (base, settings.model_dump_json())


def _base_of(choice: AdapterChoice) -> str:
    """The base an adapter needs, as a name or folder on this server."""
    if not choice.base_model:
        return choose_base_model(None).name_or_path
    path = choose_base_model(choice.base_model).name_or_path
    if os.path.isabs(path) and not Path(path).is_dir():
        raise AdapterError(f"{choice.label} was trained on {Path(path).name}, which is not on this server")
    return path
