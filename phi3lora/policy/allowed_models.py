"""Which base models this server may load when the choice comes from someone else's data.

An adapter (a zip, a hub repository, a folder given to `compare`) names the base it was trained on, and a
visitor of a shared Space types base model names into the Train and Data tabs. Neither may make the server load
an arbitrary repository or folder: the base must be on the operator's allow-list, $PHI3LORA_ALLOWED_BASE_MODELS
(comma separated hub ids or folders; default: the Phi-3 family below, the demo model and $PHI3LORA_BASE_MODEL).
No torch here: the UI and the job path ask it before anything loads.
"""
from __future__ import annotations

from pathlib import Path

from .. import settings
from ..errors import UserError

DEMO = "demo"
DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "demo_model"
# Built into transformers as Phi3ForCausalLM (no remote code), all with Phi-3's chat special tokens.
PHI3_FAMILY = (
    "microsoft/Phi-3-mini-4k-instruct",
    "microsoft/Phi-3-mini-128k-instruct",
    "microsoft/Phi-3.5-mini-instruct",
    "microsoft/Phi-3-medium-4k-instruct",
    "microsoft/Phi-3-medium-128k-instruct",
)


class BaseModelNotAllowed(UserError, PermissionError):
    """A base model this server does not load for this caller; the message says how to allow it."""


def remote_code_allowed() -> bool:
    """The operator's switch for running Python code shipped with a model repository (off unless turned on).
    Nothing a user hands the server (settings, an adapter, a dataset) can turn it on."""
    return settings.get_bool("PHI3LORA_ALLOW_REMOTE_CODE")


def allowed_base_models() -> tuple[str, ...]:
    chosen = settings.get_list("PHI3LORA_ALLOWED_BASE_MODELS")
    if chosen:
        return tuple(chosen)
    extra = settings.get_str("PHI3LORA_BASE_MODEL")
    return tuple(dict.fromkeys([*PHI3_FAMILY, DEMO, *([extra] if extra else [])]))


def canonical(name: str) -> str:
    """"demo" for the demo model however it is named (the word, or its folder); else the name as given."""
    if name == DEMO:
        return DEMO
    try:
        if Path(name).resolve() == DEMO_MODEL_DIR:
            return DEMO
    except (OSError, ValueError):
        pass
    return name


def is_allowed(name: str) -> bool:
    return canonical(name) in {canonical(allowed) for allowed in allowed_base_models()}


def require_allowed(name: str, what: str) -> None:
    """Refuse a base model off the allow-list. The message never says whether such a folder or repository
    exists: the answer is the same for every name that is not allowed."""
    if not is_allowed(name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise BaseModelNotAllowed(
            f"{what}: base model {shown!r} is not available on this server; available: "
            f"{', '.join(allowed_base_models())} (the operator sets the list with PHI3LORA_ALLOWED_BASE_MODELS)")
