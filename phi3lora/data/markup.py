"""Chat markup inside a `text` column. Phi-3's own markup (the phi3_text format) is read back into turns:

    <|system|>\\nS<|end|>\\n<|user|>\\nQ<|end|>\\n<|assistant|>\\nA<|end|>

A role tag opens a turn and `<|end|>` closes it; a turn's text is stripped of the spaces and newlines around it
(the Phi-3 Cookbook's files write `<|assistant|> \\n` and `answer <|end|>`); a tag that opens a new turn also
closes an open one, and the last turn may run to the end of the text; a leading `<s>` and a trailing
`<|endoftext|>` (what a tokenizer's decoded text keeps) are dropped. Text outside the turns is a problem. Other
models' markup (ChatML, Llama, Gemma) is recognised only to be named in a refusal (kinds.py): its turns are not
read, since the tags would be read for words.
"""
from __future__ import annotations

import re

from .turns import Invalid, Turn
from .wording import shown

_TAG = re.compile(r"<\|(system|user|assistant|end)\|>")
_ROLE_TAG = re.compile(r"<\|(?:system|user|assistant)\|>")
# the tag each other template opens a turn with -> how a message names the template
_OTHER_TEMPLATES = {
    "<|im_start|>": "ChatML (<|im_start|>)",
    "<|start_header_id|>": "Llama 3 (<|start_header_id|>)",
    "[INST]": "Llama 2 / Mistral ([INST])",
    "<start_of_turn>": "Gemma (<start_of_turn>)",
}


def has_phi3_markup(text: object) -> bool:
    """Whether a value is text holding at least one Phi-3 role tag."""
    return isinstance(text, str) and _ROLE_TAG.search(text) is not None


def other_markup(text: object) -> str | None:
    """The name of another model's chat template whose tags the text holds, or None."""
    if not isinstance(text, str):
        return None
    return next((name for tag, name in _OTHER_TEMPLATES.items() if tag in text), None)


def phi3_turns(text: str) -> list[Turn]:
    """The turns of Phi-3 markup, numbered from 1; Invalid for text outside them or an <|end|> closing nothing."""
    body = text.strip().removeprefix("<s>").strip().removesuffix("<|endoftext|>")
    pieces = _TAG.split(body)  # text, tag, text, tag, text, ...
    if pieces[0].strip():
        raise Invalid(f"text before the first role tag: {shown(pieces[0].strip())}; Phi-3 chat markup starts with "
                      "<|system|> or <|user|>")
    turns: list[Turn] = []
    role: str | None = None  # the open turn's role
    content = ""
    for tag, after in zip(pieces[1::2], pieces[2::2]):
        if tag == "end":
            if role is None:
                raise Invalid(f"an <|end|> after turn {len(turns)} closes no turn")
            turns.append(_turn(len(turns) + 1, role, content))
            role = None
            if after.strip():
                raise Invalid(f"text outside the turns after turn {len(turns)}: {shown(after.strip())}")
        else:
            if role is not None:
                turns.append(_turn(len(turns) + 1, role, content))
            role, content = tag, after
    if role is not None:
        turns.append(_turn(len(turns) + 1, role, content))
    return turns


def _turn(number: int, role: str, content: str) -> Turn:
    return Turn.numbered(number, role, role, content.strip())
