"""The forgetting check of a held-out evaluation: base and adapted scored on a small general-chat set that ships with
phi3lora (data.samples.GENERAL_CHAT, everyday conversations written for the project), next to the gain on the
run's own eval split, so that a user sees what the adapter cost elsewhere.

    general_chat_figures(score)    the summary's general_chat_* figures, `score` being evaluation.eval_losses on a model
    gain_sentence(summary)         "On its own eval split the adapter's loss is 0.41 vs base 5.02: -91.8% (better)."
    forgetting_sentence(summary)   the same for everyday chat; None for an evaluation made before the check existed

Imports no torch: the sentences are read by the CLI and the UI.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import data
from ..data.samples import GENERAL_CHAT

SAME_WITHIN_PERCENT = 1.0  # a change of the loss smaller than this is "about the same"


def general_chat() -> list[data.Conversation]:
    dataset = data.read_dataset(GENERAL_CHAT.path)
    return data.usable_conversations(dataset)


def general_chat_figures(score: Callable[[list[data.Conversation]], tuple[float, float, int]]) -> dict[str, Any]:
    """The summary's figures for the general-chat set; `score(conversations)` gives (base loss, adapted loss,
    scored tokens), scored as the eval split is."""
    conversations = general_chat()
    base, adapted, tokens = score(conversations)
    return {"general_chat_base_loss": base, "general_chat_adapted_loss": adapted,
            "general_chat_conversations": len(conversations), "general_chat_tokens": tokens}


def change_percent(base: float, adapted: float) -> float:
    """The adapted model's loss relative to the base's, in percent: above 0 it does worse."""
    return (adapted - base) / base * 100 if base else 0.0


def _compared(base: float, adapted: float) -> str:
    change = change_percent(base, adapted)
    verdict = ("about the same" if abs(change) < SAME_WITHIN_PERCENT else "worse" if change > 0 else "better")
    return f"the adapter's loss is {adapted:.3f} vs base {base:.3f}: {change:+.1f}% ({verdict})"


def gain_sentence(summary: dict[str, Any]) -> str:
    return f"On its own eval split {_compared(summary['base_loss'], summary['adapted_loss'])}."


def forgetting_sentence(summary: dict[str, Any]) -> str | None:
    if "general_chat_base_loss" not in summary:
        return None
    compared = _compared(summary["general_chat_base_loss"], summary["general_chat_adapted_loss"])
    cost = ("; that is what the adapter cost elsewhere"
            if change_percent(summary["general_chat_base_loss"], summary["general_chat_adapted_loss"])
            >= SAME_WITHIN_PERCENT else "")
    return (f"On everyday chat ({summary['general_chat_conversations']} general conversations that ship with "
            f"phi3lora) {compared}{cost}.")
