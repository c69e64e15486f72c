"""Which base model a job uses on this machine, decided without loading torch where the answer is certain.

`choose_base_model`: `demo` or nothing on a machine without a CUDA GPU -> the demo model; else the name given,
$PHI3LORA_BASE_MODEL, or Phi-3-mini. Whether there is a CUDA GPU is torch's answer, but torch takes seconds to
import: where the installed torch was built without CUDA or ROCm (its torch/version.py says so), or
CUDA_VISIBLE_DEVICES hides every GPU, the answer is no without asking it, so `validate`, a job's preview and
`runs start` stay quick. `model_file` reads a JSON file of the base model's folder or hub repository (its
config.json, its tokenizer's), with no torch either. modeling.py re-exports the names it had.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from . import settings as env_settings
from .errors import UserError

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
DEFAULT_GPU_MODEL = "microsoft/Phi-3-mini-4k-instruct"


class ModelLoadError(UserError, RuntimeError):
    """The base model or tokenizer could not be loaded; the message says which and why."""


@dataclass(frozen=True)
class BaseModelChoice:
    name_or_path: str
    is_demo: bool
    why: str  # one line for the user: which model and why this one

    def __str__(self) -> str:
        return f"{self.name_or_path} ({self.why})"


def choose_base_model(requested: str | None) -> BaseModelChoice:
    """`demo` or empty on a machine without GPU -> the demo model; else the name given, $PHI3LORA_BASE_MODEL, or Phi-3-mini."""
    if requested:
        if requested == "demo":
            return BaseModelChoice(str(DEMO_MODEL_DIR), True, "the embedded demo model, as asked")
        return BaseModelChoice(requested, _same_folder(requested, DEMO_MODEL_DIR), "as asked")
    from_env = env_settings.get_str("PHI3LORA_BASE_MODEL")
    if from_env:
        return choose_base_model(from_env) if from_env == "demo" else BaseModelChoice(from_env, False, "from $PHI3LORA_BASE_MODEL")
    if cuda_available():
        return BaseModelChoice(DEFAULT_GPU_MODEL, False, "default on a CUDA GPU")
    return BaseModelChoice(str(DEMO_MODEL_DIR), True, "the embedded demo model: no CUDA GPU here")


def cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch where the answer is certainly no."""
    if "torch" not in sys.modules and (os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not _torch_built_for_gpus()):
        return False
    import torch

    return torch.cuda.is_available()


def _torch_built_for_gpus() -> bool:
    """Whether the installed torch was built with CUDA or ROCm, as its torch/version.py says (`cuda = None` and
    `hip = None` in a CPU build), read as text. Unknown: True, so that torch itself is asked."""
    spec = importlib.util.find_spec("torch")
    if spec is None:
        return False  # no torch at all: nothing here could use a GPU
    folder = next(iter(spec.submodule_search_locations or []), None)
    try:
        tree = ast.parse((Path(folder) / "version.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, TypeError, ValueError):
        return True
    built = {}
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id in ("cuda", "hip"):
            built[target.id] = not (isinstance(node.value, ast.Constant) and node.value.value is None)
    return built.get("cuda", True) or built.get("hip", True)


def _same_folder(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve() == folder
    except OSError:
        return False


def model_file(name_or_path: str, filename: str, parse: bool = True):
    """A file of the model's folder, or of its hub repository as transformers finds it (the hub cache): its JSON
    object, or its path with parse=False; None where it is missing, unreadable or not a JSON object."""
    try:
        if Path(name_or_path).is_dir():
            path = str(Path(name_or_path) / filename) if (Path(name_or_path) / filename).is_file() else None
        else:
            from transformers.utils.hub import cached_file  # transformers' own lookup, which loads no torch

            path = cached_file(name_or_path, filename, _raise_exceptions_for_gated_repo=False,
                               _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        if path is None or not parse:
            return path
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
