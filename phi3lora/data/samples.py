"""The datasets that ship with phi3lora (`phi3lora/samples/`), written for the project: what a first fine-tune
needs when the user has no file of their own, in a clone from GitHub and on a Space alike.

The identity sample is the classic first fine-tune: its answers say "I am {{name}}, ... trained by {{author}}",
the user types the name and the maker, and `fill_identity` writes the filled copy that is trained on. A value
is put into the parsed text, never into the file's raw JSON, so a quote or a backslash in a name is just text.
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, shorten

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
NAME_MARK, AUTHOR_MARK = "{{name}}", "{{author}}"
DEFAULT_NAME, DEFAULT_AUTHOR = "Quill", "the phi3lora project"
MAX_FIELD_CHARS = 60  # a name or a maker, not a paragraph: every answer repeats it


@dataclass(frozen=True)
class Sample:
    file: str          # its name in SAMPLES_DIR, also its name in the app's list
    what: str          # one line for the list and the CLI
    fillable: bool = False  # answers hold NAME_MARK and AUTHOR_MARK

    @property
    def path(self) -> Path:
        return SAMPLES_DIR / self.file


IDENTITY = Sample("identity.jsonl", "90 one-turn conversations teaching the assistant its name and its maker "
                  "(type them; the answers say {{name}} and {{author}})", fillable=True)
MULTI_TURN = Sample("multi_turn.jsonl", "24 everyday conversations of 2 to 4 exchanges, some with a system "
                    "prompt (ShareGPT layout: conversations of from/value turns)")
TOOL_CALLS = Sample("tool_calls.jsonl", "21 tool-calling conversations: tools, the assistant's tool_calls, the "
                    "tool results and a final answer (OpenAI messages layout)")
SAMPLES = (IDENTITY, MULTI_TURN, TOOL_CALLS)
# Not in SAMPLES, so not offered for training: the held-out evaluation's forgetting check scores base and adapted on
# it (inference/evaluation.py), which would tell nothing about an adapter trained on it.
GENERAL_CHAT = Sample("general_chat.jsonl", "36 short everyday conversations (cooking, plants, manners, travel, "
                      "small facts): what an adapter should not make the model worse at")


def shipped_samples() -> dict[str, Sample]:
    """File name -> sample, for the samples present (a sample file missing from an install is left out)."""
    return {sample.file: sample for sample in SAMPLES if sample.path.is_file()}


def fill_identity(folder: Path, name: str = "", author: str = "") -> Path:
    """Write the identity sample with the name and maker filled in (empty: DEFAULT_NAME, DEFAULT_AUTHOR) to
    `folder`, and return the file. Refuses a value that is not a short line of visible text."""
    name = _checked("name", name or DEFAULT_NAME)
    author = _checked("maker", author or DEFAULT_AUTHOR)
    filled = []
    for line in IDENTITY.path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for message in record["messages"]:
            message["content"] = message["content"].replace(NAME_MARK, name).replace(AUTHOR_MARK, author)
        filled.append(json.dumps(record, ensure_ascii=False))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"identity-{_slug(name)}.jsonl"
    target.write_text("\n".join(filled) + "\n", encoding="utf-8")
    return target


def _checked(field: str, value: str) -> str:
    value = value.strip()
    if len(value) > MAX_FIELD_CHARS:
        raise UserError(f"The identity's {field} is {len(value)} characters long; at most {MAX_FIELD_CHARS}.")
    bad = next((c for c in value if unicodedata.category(c)[0] in "CZ" and c != " "), None)
    if bad is not None:
        raise UserError(f"The identity's {field} {shorten(value)} holds {unicodedata.name(bad, repr(bad))} "
                        "(U+%04X): type it on one line, in visible characters." % ord(bad))
    if "{{" in value or "}}" in value:
        raise UserError(f"The identity's {field} {shorten(value)} holds '{{{{' or '}}}}': type the name itself.")
    return value


def _slug(name: str) -> str:
    """A file name part from a typed name: letters, digits and dashes only."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40] or "custom"
