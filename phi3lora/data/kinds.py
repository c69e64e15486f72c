"""What a dataset holds when it is not chat conversations for supervised fine-tuning (SFT), said in one line.

  multimodal     an `images`, `videos` or `audios` column (or `image`, `video`, `audio`) with a value, image or
                 audio content parts, or <image>, <video>, <audio> placeholders in the text: Phi-3-mini reads
                 text only
  preference     `chosen` and `rejected` answers: TRL's prompt/chosen/rejected (plain or conversational, or
                 without a prompt) and LLaMA-Factory's conversations + chosen/rejected. Pairs for preference
                 training (DPO: preferences.py reads them), not SFT
  content_parts  turns whose content is a list of typed parts ([{type, value}], LLaMA-Factory's v1 format)
  other_markup   a `text` column holding another model's chat markup (ChatML, Llama, Gemma; markup.py)
  pretraining    a `text` column of plain text, without chat markup: pre-training text, not conversations

A file more than half of whose records are of one kind is refused whole with that kind's line (`file_refusal`),
not with a problem per record; a record of a kind among chat records gets a short problem (`record_problem`).

KTO data: a `label` column of booleans (or "true"/"false" text, as CSV has it) marks each answer desirable or
not. SFT learns to write every answer it is given, so the records labelled false are left out, with a warning
that counts them, and those labelled true train as any other record (`kto_split`). A `label` of other values
(classes, scores) is not KTO's: it is an ignored column like any other.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from .formats import TURN_LISTS, formats_matched
from .markup import has_phi3_markup, other_markup
from .wording import shown_names

MULTIMODAL, PREFERENCE, CONTENT_PARTS, OTHER_MARKUP, PRETRAINING = (
    "multimodal", "preference", "content_parts", "other_markup", "pretraining")
KINDS = (MULTIMODAL, PREFERENCE, CONTENT_PARTS, OTHER_MARKUP, PRETRAINING)  # a record's kind is the first that fits

_MEDIA_COLUMNS = {"images": "images", "image": "images", "videos": "videos", "video": "videos", "audios": "audio",
                  "audio": "audio"}
_PLACEHOLDERS = {"<image>": "images", "<video>": "videos", "<audio>": "audio"}
_PLACEHOLDER = re.compile("|".join(_PLACEHOLDERS))
_MEDIA_PARTS = {"image": "images", "image_url": "images", "input_image": "images", "video": "videos",
                "audio": "audio", "input_audio": "audio"}  # content-part types (OpenAI's, LLaMA-Factory's)
# the columns whose text or turns may hold placeholders or content parts
_SCANNED = (*TURN_LISTS, "prompt", "completion", "chosen", "rejected", "instruction", "input", "output", "text")


def is_preference(record: dict) -> bool:
    """A preference pair: a chosen and a rejected answer (and a prompt, in a column or in the turns)."""
    return record.get("chosen") is not None and record.get("rejected") is not None


def record_kind(record: dict) -> str | None:
    """The kind of a record that is not an SFT chat record, or None."""
    scanned = _scan(record)
    if _media(record, scanned):
        return MULTIMODAL
    if is_preference(record):
        return PREFERENCE
    if scanned[0]:
        return CONTENT_PARTS
    text = record.get("text")
    if isinstance(text, str) and not has_phi3_markup(text) and not formats_matched(record):
        return OTHER_MARKUP if other_markup(text) else PRETRAINING
    return None


def dataset_kind(records: list[dict]) -> str | None:
    """The kind more than half of the records have, or None (most are chat records, or there are none)."""
    return most_common_kind([record_kind(record) for record in records])


def most_common_kind(record_kinds: list[str | None]) -> str | None:
    """dataset_kind from each record's record_kind."""
    counts = Counter(kind for kind in record_kinds if kind)
    kind, count = max(counts.items(), key=lambda item: item[1], default=(None, 0))
    return kind if count * 2 > len(record_kinds) else None


def file_refusal(kind: str, mine: list[dict]) -> str:
    """The one line that refuses a file of this kind for SFT, from what its records of that kind hold."""
    if kind == MULTIMODAL:
        found = list(dict.fromkeys(evidence for record in mine for evidence in _media(record, _scan(record))))
        media = list(dict.fromkeys(what for what, _ in found))
        return (f"the records hold {' and '.join(media)} ({', '.join(where for _, where in found[:4])}), and "
                "Phi-3-mini reads text only: use text-only records")
    if kind == PREFERENCE:
        advice = ""
        if all(record.get("prompt") is not None and isinstance(record.get("chosen"), (str, list)) for record in mine):
            # TRL's shape, whose chosen answers make a prompt_completion record
            advice = "; to train on the chosen answers alone, map them with --columns completion=chosen"
        return ("the records are preference data (a 'chosen' and a 'rejected' answer to each prompt), not "
                "conversations for supervised fine-tuning: train a finished run's adapter on them with DPO (--method "
                f"dpo --from-adapter RUN, or the Train tab's DPO choice){advice}")
    if kind == CONTENT_PARTS:
        types = list(dict.fromkeys(t for record in mine for t in _scan(record)[0]))
        return (f"turn contents are lists of typed parts (types {shown_names(types)}, as in LLaMA-Factory's v1 format), "
                "which are not read here: write each turn's content as one string of text")
    if kind == OTHER_MARKUP:
        template = next(name for record in mine if (name := other_markup(record.get("text"))))
        return (f"the 'text' column holds the chat markup of another model's template, {template}, not Phi-3's: "
                "write the records as messages, or in Phi-3's markup (<|user|>...<|end|><|assistant|>...<|end|>)")
    return ("the records hold plain text in a 'text' column: pre-training text, not conversations; fine-tuning "
            "here needs chat records (messages, sharegpt, alpaca, prompt_completion) or Phi-3 chat markup "
            "(<|user|>...<|end|><|assistant|>...<|end|>)")


def record_problem(kind: str) -> str:
    return {
        MULTIMODAL: "the record holds images, video or audio, and Phi-3-mini reads text only",
        PREFERENCE: "the record is preference data (chosen/rejected), not a conversation for supervised fine-tuning",
        CONTENT_PARTS: "turn contents are lists of typed parts, not text: write each as one string",
        OTHER_MARKUP: "the 'text' column holds another model's chat markup, not Phi-3's",
        PRETRAINING: "the 'text' column holds plain text (pre-training text), not a conversation",
    }[kind]


def kto_split(objects: list[tuple[int, dict]]) -> tuple[list[tuple[int, dict]], int | None]:
    """(the records to train on, how many labelled false were left out) when `label` is KTO's boolean column;
    (objects, None) when it is not."""
    labels = [_label(row["label"]) for _, row in objects if row.get("label") is not None]
    if not labels or None in labels:
        return objects, None
    kept = [(number, row) for number, row in objects if _label(row.get("label")) is not False]
    return kept, len(objects) - len(kept)


def kto_warning(left_out: int, records: int) -> str:
    return (f"{left_out} of {records} records are labelled false in the 'label' column (KTO data: answers marked "
            "undesirable) and are left out: supervised fine-tuning would learn to write them")


def _label(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _media(record: dict, scanned: tuple[list, list]) -> list[tuple[str, str]]:
    """(what, where) for each sign of media in the record: ("images", "the 'images' column"); `scanned`: _scan."""
    part_types, tags = scanned
    found = [(what, f"the {column!r} column") for column, what in _MEDIA_COLUMNS.items()
             if record.get(column) not in (None, "", [], {})]
    found += [(_PLACEHOLDERS[tag], f"{tag} placeholders") for tag in dict.fromkeys(tags)]
    found += [(_MEDIA_PARTS[t], f"{t!r} content parts") for t in part_types if t in _MEDIA_PARTS]
    return found


def _scan(record: dict) -> tuple[list, list]:
    """(the types of the typed content parts, the media placeholders) in the record's texts and turns, in one pass
    (it runs on every record)."""
    types: list = []
    tags: list = []
    for key in _SCANNED:
        value = record.get(key)
        if value is None:
            continue
        for item in value if isinstance(value, list) else (value,):
            content = item.get("content", item.get("value")) if isinstance(item, dict) else item
            if isinstance(content, str):
                if "<" in content:
                    tags += _PLACEHOLDER.findall(content)
            elif isinstance(content, list) and content and all(isinstance(p, dict) and "type" in p for p in content):
                types += [part["type"] for part in content if isinstance(part["type"], str)]
    return list(dict.fromkeys(types)), tags
