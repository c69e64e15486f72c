"""Uploaded adapter zips, unpacked without trusting them, and where they are kept.

    folder = unpack("my-adapter.zip", visitor.owner_key)   # <data root>/adapters/<hash of the visitor>/<name>

Only the PEFT files are extracted (adapter_config.json, adapter_model.safetensors, and our config.yaml), and
never by the sizes the zip's headers declare: each is copied in chunks and counted, and the copy stops (and is
deleted) at its cap. The small files get 64 KB each. The weights get the smallest of:
- what a LoRA adapter with that adapter_config.json can weigh on its base: r, target_modules (and
  modules_to_save, DoRA) with the base's shape give the parameter count, at 4 bytes each (float32, the most
  peft stores), plus the safetensors header;
- $PHI3LORA_MAX_ADAPTER_MB (the only cap when the base's shape is unknown here);
- what is left of the uploader's $PHI3LORA_ADAPTER_QUOTA_MB.
Each visitor's adapters are theirs (a folder named by a hash of who they are): one user's uploads never count
against, nor reach, another's. Every adapter goes $PHI3LORA_ADAPTER_HOURS after its upload.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..policy import limits
from .adapter_info import AdapterError, adapter_settings
from ..base_model import choose_base_model

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "config.yaml")  # all we ever extract
WEIGHTS = "adapter_model.safetensors"
SMALL_FILE_BYTES = 64 * 1024  # adapter_config.json, config.yaml, and a base's config.json
CHUNK_BYTES = 1024 * 1024
MB = 1024 * 1024
BYTES_PER_PARAMETER = 4
HEADER_BYTES = 8 + 4096  # safetensors: the header's length, then its JSON (metadata)...
HEADER_BYTES_PER_TENSOR = 512  # ...with one entry per tensor: its name, dtype, shape and offsets
EMBEDDING = "model.embed_tokens"
OUTPUT_LAYER = "lm_head"
INCOMING = ".incoming"  # adapters being unpacked, beside the visitors' folders


# --- what an adapter can weigh -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """What sizes a Phi-3 model's layers: enough to count the parameters of any LoRA adapter of it."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, values: dict) -> ModelShape | None:
        """From a transformers config.json, or None when it does not describe a Phi-3-shaped model."""
        try:
            heads = values["num_attention_heads"]
            shape = cls(values["hidden_size"], values["num_hidden_layers"], heads,
                        values.get("num_key_value_heads") or heads, values["intermediate_size"], values["vocab_size"])
        except (KeyError, TypeError):
            return None
        sizes = vars(shape).values()
        if not all(isinstance(size, int) and 0 < size < 10**7 for size in sizes) or shape.hidden % heads:
            return None
        return shape

    def modules(self) -> dict[str, tuple[int, int]]:
        """Every module LoRA can adapt, by its full name: (inputs, outputs)."""
        head = self.hidden // self.heads
        per_layer = {"self_attn.qkv_proj": (self.hidden, (self.heads + 2 * self.kv_heads) * head),
                     "self_attn.o_proj": (self.heads * head, self.hidden),
                     "mlp.gate_up_proj": (self.hidden, 2 * self.intermediate),
                     "mlp.down_proj": (self.intermediate, self.hidden)}
        modules = {f"model.layers.{i}.{name}": size for i in range(self.layers) for name, size in per_layer.items()}
        return {**modules, EMBEDDING: (self.vocab, self.hidden), OUTPUT_LAYER: (self.hidden, self.vocab)}


PHI3_MINI = ModelShape(hidden=3072, layers=32, heads=32, kv_heads=32, intermediate=8192, vocab=32064)
PHI3_MEDIUM = ModelShape(hidden=5120, layers=40, heads=40, kv_heads=10, intermediate=17920, vocab=32064)
KNOWN_SHAPES = {"phi-3-mini": PHI3_MINI, "phi-3.5-mini": PHI3_MINI, "phi-3-medium": PHI3_MEDIUM}  # repo name starts


def base_shape(base: str | None) -> ModelShape | None:
    """The shape of the base the app would load for this adapter: a local folder's config.json (the demo model
    is one), a known hub name, or None."""
    name_or_path = choose_base_model(base).name_or_path
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        text = read_small(config)
        try:
            return ModelShape.from_config(json.loads(text)) if text else None
        except ValueError:
            return None
    repo_name = name_or_path.rsplit("/", 1)[-1].lower()
    return next((shape for prefix, shape in KNOWN_SHAPES.items() if repo_name.startswith(prefix)), None)


def read_small(path: Path) -> str | None:
    """A file's text, or None when it is longer than SMALL_FILE_BYTES."""
    with open(path, "rb") as file:
        data = file.read(SMALL_FILE_BYTES + 1)
    return data.decode("utf-8", errors="replace") if len(data) <= SMALL_FILE_BYTES else None


def _names(value) -> list[str] | None:
    """A list of module names from adapter_config.json (a single name counts as a list of one)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _matches(module: str, names: list[str]) -> bool:
    """peft's rule for a list of target names: the module's full name, or its last dotted parts."""
    return any(module == name or module.endswith("." + name) for name in names)


def _rank(config: dict) -> int:
    pattern = config.get("rank_pattern") or {}
    ranks = [config.get("r", 8), *(pattern.values() if isinstance(pattern, dict) else [None])]
    if not all(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1 for rank in ranks):
        raise AdapterError("adapter_config.json: r (and any rank_pattern) must be positive whole numbers")
    return max(ranks)


def lora_size(config: dict, shape: ModelShape) -> tuple[int, int]:
    """(parameters, tensors) of a LoRA adapter with this adapter_config.json on a model of this shape; an upper
    bound where the config leaves room (a target pattern counts every module, rank_pattern its largest rank)."""
    modules = shape.modules()
    targets = config.get("target_modules")
    if targets == "all-linear":
        targeted = [m for m in modules if m not in (EMBEDDING, OUTPUT_LAYER)]
    elif isinstance(targets, list) and _names(targets) is not None:
        targeted = [m for m in modules if _matches(m, targets)]
    else:  # peft's defaults, or a regular expression: count every module rather than run someone's pattern
        targeted = list(modules)
    rank = _rank(config)
    extras = bool(config.get("use_dora")) + bool(config.get("lora_bias"))  # a vector of the outputs' size each
    parameters = sum(rank * (modules[m][0] + modules[m][1]) + extras * modules[m][1] for m in targeted)
    tensors = len(targeted) * (2 + extras)
    saved = [m for m in modules if _matches(m, _names(config.get("modules_to_save")) or [])]  # full copies
    parameters += sum(modules[m][0] * modules[m][1] for m in saved)
    return parameters, tensors + len(saved)


@dataclass(frozen=True)
class Cap:
    """The most bytes one extracted file may take, and how a refusal names it."""
    bytes: int
    reason: str
    error: type[Exception] = AdapterError

    def refuse(self, source: str, member: str, verb: str = "unpacks to") -> Exception:
        return self.error(f"{source}: {member} {verb} more than {megabytes(self.bytes)}: {self.reason}")


def megabytes(size: int) -> str:
    value = size / MB
    return f"{value:.2f} MB" if value < 10 else f"{value:,.0f} MB"


SMALL_FILE_CAP = Cap(SMALL_FILE_BYTES, f"the most {SMALL_FILE_BYTES // 1024} KB such a file may take")


def weights_cap(config: dict, base: str | None, owner: Path | None) -> Cap:
    """The smallest of what this adapter can weigh on its base, the operator's limit, and what is left of the
    owner's quota (an upload's owner; a hub adapter has none)."""
    most = limits.limit("PHI3LORA_MAX_ADAPTER_MB")
    shape = base_shape(base)
    unknown = "" if shape else f"; the shape of its base {_shown(base)} is not known here"
    caps = [Cap(most * MB, f"this server's limit of {most} MB (PHI3LORA_MAX_ADAPTER_MB){unknown}",
                limits.LimitExceeded)]
    if shape:
        parameters, tensors = lora_size(config, shape)
        caps.append(Cap(parameters * BYTES_PER_PARAMETER + HEADER_BYTES + tensors * HEADER_BYTES_PER_TENSOR,
                        f"the most a rank {_rank(config)} LoRA adapter of {_shown(base)} can weigh ({parameters:,} "
                        "parameters, counted from its adapter_config.json's r and target_modules)"))
    if owner is None:
        return min(caps, key=lambda cap: cap.bytes)
    quota = limits.limit("PHI3LORA_ADAPTER_QUOTA_MB")
    left = max(0, quota * MB - folder_bytes(owner))
    caps.append(Cap(left, f"what is left ({megabytes(left)}) of your uploaded adapters' quota, this server's limit "
                          f"of {quota} MB per user (PHI3LORA_ADAPTER_QUOTA_MB); uploads go after "
                          f"{limits.limit('PHI3LORA_ADAPTER_HOURS')} hours (PHI3LORA_ADAPTER_HOURS)",
                    limits.LimitExceeded))
    return min(caps, key=lambda cap: cap.bytes)


def _shown(base: str | None) -> str:
    """A base's name for a message: a folder by its last part, never a server path."""
    if not base or base == "demo":
        return "the demo model" if base else "the default base"
    return Path(base).name if Path(base).is_absolute() else base[:80]


# --- where uploads are kept ---------------------------------------------------------------------------------------

def uploads_root() -> Path:
    return settings.data_root() / "adapters"


def owner_folder(owner_key: str) -> Path:
    """A visitor's own folder, named by a hash: names and session ids stay out of paths."""
    return uploads_root() / hashlib.sha256(owner_key.encode()).hexdigest()[:32]


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def _adapter_folders(root: Path) -> Iterator[Path]:
    for top in root.iterdir():
        if (top / "adapter_config.json").is_file():  # kept before uploads were per visitor: adapters/<name>
            yield top
        elif top.is_dir():
            yield from (child for child in top.iterdir() if child.is_dir())


def prune_expired() -> None:
    """Remove uploaded adapters (and unpacking leftovers) older than $PHI3LORA_ADAPTER_HOURS."""
    root = uploads_root()
    if not root.is_dir():
        return
    oldest = time.time() - limits.limit("PHI3LORA_ADAPTER_HOURS") * 3600
    for folder in list(_adapter_folders(root)):
        try:
            if folder.stat().st_mtime < oldest:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            continue


_owner_locks: dict[str, threading.Lock] = {}
_owner_locks_guard = threading.Lock()


def _lock_of(owner_key: str) -> threading.Lock:
    """One upload at a time per visitor, so two at once cannot both fit in what is left of the quota."""
    with _owner_locks_guard:
        return _owner_locks.setdefault(owner_key, threading.Lock())


# --- unpacking --------------------------------------------------------------------------------------------------

def unpack(zip_path: str | Path, owner_key: str) -> Path:
    """Unpack an adapter zip (PEFT layout, nested or not) into the visitor's folder; returns the adapter's folder.
    Refuses, leaving nothing behind, a zip that is not an adapter or that unpacks past a cap."""
    zip_path = Path(zip_path)
    prune_expired()
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise AdapterError(f"{zip_path.name} is not a readable zip file ({error})") from None
    owner = owner_folder(owner_key)
    with archive, _lock_of(owner_key):
        members = _members(archive, zip_path.name)
        incoming = uploads_root() / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        # Unpacked under the zip's own name, so messages about it name the zip, not a temporary folder.
        name = re.sub(r"[^\w.-]", "_", zip_path.stem).strip(".")[:60] or "adapter"
        staging = Path(tempfile.mkdtemp(dir=incoming)) / name
        staging.mkdir()
        try:
            for member in ("adapter_config.json", "config.yaml"):
                if member in members:
                    _copy_capped(archive, members[member], staging / member, SMALL_FILE_CAP, zip_path.name)
            base, _ = adapter_settings(staging)  # what the app will load it on (and whether that is allowed)
            cap = weights_cap(read_adapter_config(staging, zip_path.name), base, owner)
            digest = _copy_capped(archive, members[WEIGHTS], staging / WEIGHTS, cap, zip_path.name)
            target = owner / f"{staging.name}-{digest[:10]}"
            shutil.rmtree(target, ignore_errors=True)  # the same adapter again: the new copy (and lifetime) wins
            owner.mkdir(parents=True, exist_ok=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging.parent, ignore_errors=True)
    return target


def _members(archive: zipfile.ZipFile, archive_name: str) -> dict[str, zipfile.ZipInfo]:
    """The adapter's files in the zip by name, wherever they are nested; anything else is never extracted."""
    members = {Path(info.filename).name: info for info in archive.infolist() if not info.is_dir()}
    if "adapter_model.bin" in members and WEIGHTS not in members:
        raise AdapterError(f"{archive_name} holds adapter_model.bin: pickled weights are never loaded here; "
                           "save the adapter with safetensors (peft's default) and zip it again")
    missing = [name for name in ADAPTER_FILES[:2] if name not in members]
    if missing:
        raise AdapterError(f"{archive_name} is not a PEFT adapter zip: {' and '.join(missing)} missing")
    return {name: members[name] for name in ADAPTER_FILES if name in members}


def _copy_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, cap: Cap, archive_name: str) -> str:
    """Stream one member to `target`, counting what it really unpacks to; returns its sha256."""
    digest, copied = hashlib.sha256(), 0
    try:
        with archive.open(info) as source, open(target, "wb") as out:
            while chunk := source.read(CHUNK_BYTES):
                copied += len(chunk)
                if copied > cap.bytes:
                    raise cap.refuse(archive_name, Path(info.filename).name)
                digest.update(chunk)
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
        raise AdapterError(f"{archive_name} is damaged or uses a zip feature not supported here "
                           f"({str(error)[:200]})") from None
    return digest.hexdigest()


def read_adapter_config(folder: Path, source: str) -> dict:
    """adapter_config.json of an adapter folder whose file sizes were checked; `source` names it in messages."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except ValueError as error:
        raise AdapterError(f"{source}: adapter_config.json is not readable JSON ({str(error)[:200]})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{source}: adapter_config.json is not a JSON object")
    return config
