"""The one owner of GPU memory: who holds it, who may take it, and what a model will need.

Every user of the GPU asks here before it loads a model, and registers what it holds while it holds it:
    the chat model    inference/service.py ChatService: asks before loading; holds (releasable) while loaded, and
                      releases once idle when another asks (its idle watcher and the end of each answer check);
    a training run    runs/lifecycle.py asks when a run is started or resumed with nothing ahead of it in the GPU
                      queue (so a refusal comes at once); its body asks again when it starts (tasks/machine.py
                      run_body, from the request's "gpu" entry) and holds until it ends;
    an evaluation     inference/evaluation.py reuses the chat model when it holds the same base, else asks and holds;
    an export         merges on the CPU (deploy/export.py): it never asks;
    failures          tasks/failures.py names the other holders in an out-of-memory sentence.

Holders live in a ledger under $PHI3LORA_HOME/gpu/, one write-once record per holder, removed when it lets go, and
known by process identity: a holder whose process is gone never blocks anyone (its record is swept). A request to
release is a second record beside the holder's (NAME.release), which the holder honours when idle. The GPU belongs
to one machine, so holders on other hosts sharing the data root are ignored.

How much is free comes from one function, `device_memory()`: torch.cuda.mem_get_info on a CUDA GPU; with
$PHI3LORA_GPU_MEMORY_GB set, a simulated GPU of that size less what the ledger's holders reserve (tests, and CPU
machines that want the accounting). Sizes come from the model's own files (`model_bytes`), for any model.
This module imports torch only inside `device_memory` and `bytes_per_parameter`, never at import.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .. import settings
from ..errors import UserError
from .processes import HOST, is_alive, process_identity
from .records import read_record, write_record

GB = 1024**3
RELEASE_WAIT_SECONDS = 60.0  # how long an asker waits for busy holders to finish what they do and let go
POLL_SECONDS = 0.25
HEADROOM = {"chat": 1.2, "evaluate": 1.2, "train": 1.5}  # the weights times this: activations, KV cache, optimiser
NF4_BYTES = 0.516  # a 4-bit NF4 weight with its double-quantised scales (4.13 bits)


class GpuMemoryBusy(UserError, MemoryError):
    """Not enough GPU memory for what was asked, even after asking the holders that can let go; names them."""


@dataclass(frozen=True)
class Holder:
    path: Path
    kind: str          # chat, train, evaluate
    what: str          # for a person: "the chat model (Phi-3-mini-4k-instruct)"
    bytes: int | None  # what it reserved (weights and headroom), None when unknown
    releasable: bool   # lets go when asked and idle
    pid: int

    def describe(self) -> str:
        size = f"about {self.bytes / GB:.2f} GB, " if self.bytes else ""
        return f"{self.what} ({size}process {self.pid})"


# --- how much there is ---------------------------------------------------------------------------------------

def device_memory() -> tuple[int, int] | None:
    """(free, total) bytes of the GPU this process would use, or None when there is no GPU to share.
    $PHI3LORA_GPU_MEMORY_GB simulates one: its size less what the ledger's holders reserve."""
    simulated = settings.get_float("PHI3LORA_GPU_MEMORY_GB")
    if simulated is not None:
        total = int(simulated * GB)
        return max(0, total - sum(h.bytes or 0 for h in holders())), total
    import torch  # here: the supervisor and the status polls import this module and must stay light

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(free), int(total)


# --- the ledger ----------------------------------------------------------------------------------------------

def ledger_root() -> Path:
    return settings.data_root() / "gpu"


def holders() -> list[Holder]:
    """Everyone holding GPU memory on this machine now; records of processes that are gone are removed."""
    root = ledger_root()
    if not root.is_dir():
        return []
    for request in root.glob("*.release"):  # asked after its holder had let go
        if not request.with_suffix(".json").exists():
            request.unlink(missing_ok=True)
    found = []
    for path in sorted(root.glob("*.json")):
        record = read_record(path)
        if record is None:
            continue  # being written
        process = record["process"]
        if process.get("host") != HOST:
            continue  # another machine's GPU
        if not is_alive(process):
            path.unlink(missing_ok=True)
            _request_path(path).unlink(missing_ok=True)
            continue
        found.append(Holder(path, record["kind"], record["what"], record.get("bytes"), record["releasable"],
                            process["pid"]))
    return found


def others_text(exclude_pid: int | None = None) -> str:
    """The holders other than process `exclude_pid`, as the end of a sentence ("" when none)."""
    others = [h.describe() for h in holders() if h.pid != exclude_pid]
    return "; ".join(others)


class Hold:
    """One holder's record in the ledger, from `hold()` until `end()` (also as a context manager)."""

    def __init__(self, path: Path):
        self.path = path

    def release_requested(self) -> bool:
        return _request_path(self.path).exists()

    def end(self) -> None:
        _request_path(self.path).unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc) -> None:
        self.end()


def hold(kind: str, what: str, reserved: int | None, releasable: bool = False) -> Hold:
    """Record that this process holds `reserved` bytes of GPU memory for `what` until the Hold ends."""
    path = ledger_root() / f"{kind}-{os.getpid()}-{secrets.token_hex(4)}.json"
    write_record(path, {"kind": kind, "what": what, "bytes": reserved, "releasable": releasable,
                        "process": process_identity(os.getpid()), "since": time.time()})
    return Hold(path)


def _request_path(holder_path: Path) -> Path:
    return holder_path.with_suffix(".release")


def ask_to_release(holder: Holder, asker: str) -> None:
    try:
        write_record(_request_path(holder.path), {"asked_by": asker, "pid": os.getpid(), "asked_at": time.time()})
    except FileExistsError:
        pass  # asked already


# --- asking for room ------------------------------------------------------------------------------------------

def make_room(need: int | None, for_what: str, wait_seconds: float = RELEASE_WAIT_SECONDS) -> None:
    """Make sure `need` bytes of GPU memory are free for `for_what`: ask every holder that can let go (an idle chat
    model) to release, wait up to `wait_seconds` for them, and refuse with GpuMemoryBusy naming whoever still
    holds the GPU. No GPU: nothing to do. `need` None (size unknown): ask the releasable holders, refuse nothing."""
    memory = device_memory()
    if memory is None or (need is not None and memory[0] >= need):
        return
    free, total = memory
    if need is not None and need > total:
        raise GpuMemoryBusy(f"{for_what} needs about {need / GB:.2f} GB of GPU memory, more than the GPU's "
                            f"{total / GB:.2f} GB in all: load the base in 4 bits (QLoRA) or choose a smaller model")
    asked = [h for h in holders() if h.releasable]
    for holder in asked:
        ask_to_release(holder, for_what)
    if need is None:
        return
    deadline = time.monotonic() + wait_seconds
    while True:
        free = device_memory()[0]
        if free >= need:
            return
        still = {h.path for h in holders()}
        if not any(h.path in still for h in asked) or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    held_by = others_text() or "other programs on this machine"
    raise GpuMemoryBusy(f"not enough GPU memory for {for_what}: it needs about {need / GB:.2f} GB and "
                        f"{free / GB:.2f} GB of {total / GB:.2f} GB is free; the GPU is held by {held_by}. "
                        "Try again once they are done (Release the chat model in Compare), or load the base in "
                        "4 bits (QLoRA)")


@contextmanager
def claim(need: dict[str, Any]) -> Iterator[None]:
    """A gpu_request's room, made (make_room) and then held in the ledger until the block ends: what a task that
    loads a model does around it. No GPU to share: nothing to ask or record."""
    if device_memory() is None:
        yield
        return
    make_room(need["bytes"], need["what"])
    with hold(need["kind"], need["what"], need["bytes"]):
        yield


def gpu_request(kind: str, what: str, name_or_path: str, dtype: str, load_in_4bit: bool) -> dict[str, Any]:
    """What a task's request carries for tasks/machine.py run_body: {"bytes", "what", "kind"}."""
    weights = model_bytes(name_or_path, dtype, load_in_4bit)
    return {"kind": kind, "what": what,
            "bytes": None if weights is None else int(weights * HEADROOM[kind])}


# --- what a model needs ----------------------------------------------------------------------------------------

def bytes_per_parameter(dtype: str) -> float:
    """Bytes of one weight loaded in `dtype` (a ModelSettings.dtype; "auto" is bf16/fp16 on a GPU, fp32 on a CPU)."""
    if dtype == "auto":
        from ..base_model import cuda_available  # no torch import where none could use a GPU

        return 2.0 if cuda_available() else 4.0
    return {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}.get(dtype, 4.0)


def model_bytes(name_or_path: str, dtype: str, load_in_4bit: bool) -> int | None:
    """Roughly what the base's weights take once loaded, or None when its files are not on this machine.
    In 4 bits the decoder's linear weights take NF4_BYTES each; embeddings, LM head and norms stay in `dtype`."""
    counts = parameter_counts(name_or_path)
    if counts is None:
        return None
    total, linear = counts
    each = bytes_per_parameter(dtype)
    return int(linear * NF4_BYTES + (total - linear) * each if load_in_4bit else total * each)


def parameter_counts(name_or_path: str) -> tuple[int, int] | None:
    """(all parameters, those in the decoder layers' linear weights) of a model folder or a hub id in the local
    cache, from its files: the count stored (model.safetensors.index.json's metadata.total_size, else the
    safetensors headers), split by config.json's shapes; or config.json's shapes alone."""
    config = _read_json(_model_file(name_or_path, "config.json")) or {}
    shapes = _counts_from_config(config)
    stored = _stored_parameters(name_or_path, config)
    if stored is None:
        return shapes
    not_linear = shapes[0] - shapes[1] if shapes else 0
    return stored, max(0, stored - not_linear)


def _counts_from_config(config: dict[str, Any]) -> tuple[int, int] | None:
    """A dense decoder's parameters from its shapes (Phi-3 fuses q/k/v and gate/up; the totals are the same)."""
    try:
        hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        inner, vocab, heads = int(config["intermediate_size"]), int(config["vocab_size"]), int(config["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    attention = hidden * (heads * head_dim + 2 * kv_heads * head_dim) + heads * head_dim * hidden
    mlp = 3 * hidden * inner  # gate, up and down
    linear = layers * (attention + mlp)
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    norms = (2 * layers + 1) * hidden
    return linear + embeddings + norms, linear


def _stored_parameters(name_or_path: str, config: dict[str, Any]) -> int | None:
    index = _read_json(_model_file(name_or_path, "model.safetensors.index.json"))
    total_size = ((index or {}).get("metadata") or {}).get("total_size")
    if isinstance(total_size, (int, float)) and total_size > 0:
        stored_dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
        return int(total_size / bytes_per_parameter(stored_dtype if stored_dtype != "auto" else "bfloat16"))
    files = _weight_files(name_or_path)
    if not files:
        return None
    try:
        return sum(_safetensors_parameters(path) for path in files)
    except (OSError, ValueError):
        return None


def _safetensors_parameters(path: Path) -> int:
    """Parameters in a safetensors file, from its header alone (8 bytes of length, then JSON)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path.name}: not a safetensors header")
        header = json.loads(f.read(length))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


def _weight_files(name_or_path: str) -> list[Path]:
    folder = Path(name_or_path)
    if folder.is_dir():
        return sorted(folder.glob("*.safetensors"))
    single = _model_file(name_or_path, "model.safetensors")
    return [single] if single else []


def _model_file(name_or_path: str, filename: str) -> Path | None:
    """A file of a model folder, or of a hub model in the local cache (never fetched)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        return folder / filename if (folder / filename).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name_or_path, filename)
    except (ValueError, OSError):  # not a repository id
        return None
    return Path(found) if isinstance(found, str) else None


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
