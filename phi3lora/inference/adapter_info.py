"""What an adapter folder says, without torch: the base model it was trained on and how that base was loaded.
The app's pages, the adapter zip import and the merge read this long before (or without) any model loading."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import ModelSettings
from ..errors import UserError
from ..job_builder import load_job
from ..policy.allowed_models import remote_code_allowed, require_allowed

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class AdapterError(UserError, ValueError):
    """An adapter folder is missing or incomplete; the message names the folder and the missing file."""


def adapter_settings(adapter_dir: str | Path, check_base: bool = True) -> tuple[str | None, ModelSettings]:
    """The base model an adapter was trained on and how it was loaded, from its run folder or its adapter_config.

    An adapter is someone else's data: what it says never turns on code execution (trust_remote_code stays the
    operator's switch, $PHI3LORA_ALLOW_REMOTE_CODE), and with `check_base` the base it names must be on the
    operator's allow-list (policy/allowed_models.py). Pass check_base=False only for adapters this server trained
    itself, or when the caller names the base model."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise AdapterError(f"{adapter_dir.name} is not an adapter folder: adapter_config.json is missing")
    run_config = adapter_dir / "config.yaml"
    if run_config.is_file():
        settings = load_job(run_config).model
        base = settings.base_model
    else:
        base, settings = peft_base(adapter_dir / "adapter_config.json"), ModelSettings()
    if check_base and base:
        require_allowed(base, f"the adapter {adapter_dir.name}")
    if settings.trust_remote_code and not remote_code_allowed():
        settings = settings.model_copy(update={"trust_remote_code": False})
    return base, settings


def peft_base(adapter_config: Path) -> str | None:
    """The base model an adapter_config.json names (peft's base_model_name_or_path), or None; AdapterError when the
    file cannot be read as JSON."""
    try:
        values = json.loads(adapter_config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AdapterError(f"{adapter_config.parent.name}: adapter_config.json is not readable JSON ({error})"[:300]) from None
    base = values.get("base_model_name_or_path") if isinstance(values, dict) else None
    return base if isinstance(base, str) and base else None
