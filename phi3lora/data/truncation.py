"""What training keeps of a conversation longer than max_length, as trl 1.16's SFTTrainer cuts it.

trl tokenizes each conversation with the chat template and keeps its first max_length tokens (truncation_mode
"keep_start", its default and ours): the END is cut. With assistant-only loss only the assistant's turns train, so
what matters is where they fall:

    no_answer          every assistant turn starts at or past the cut: no trained token is left, and trl drops
                       the conversation ("fully masked" after truncation); with packing it stays, teaching nothing
    last_answer_lost   the last assistant turn starts past the cut (earlier answers train; this one not at all)
    last_answer_cut    the last assistant turn is cut short: its start trains, its end is lost
    end_cut            every answer is whole; only what follows the last one (its end-of-turn marker, the end of
                       text) is cut: the model does not learn to stop there

A tool-calling record whose `tools` schema fills the first max_length tokens is a `no_answer`. Where an answer
lies is read from the rendered text (each message's content in order) and the tokens' character offsets.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from .dataset import Conversation
from .template import for_template, has_system_role

KEEPS = "start"  # trl's truncation_mode keep_start: the first max_length tokens stay
OUTCOMES = ("no_answer", "last_answer_lost", "last_answer_cut", "end_cut")


@dataclass(frozen=True)
class Cut:
    record: int
    tokens: int  # the whole conversation's
    answer_starts_at: int | None  # token index of the first assistant turn's first token; None: not found in the text
    outcome: str | None  # one of OUTCOMES; None where the answers could not be located in the rendered text


def cuts(tokenizer, conversations: list[Conversation], lengths: list[int], max_length: int) -> list[Cut]:
    """For each conversation longer than max_length (`lengths`: their token counts, in order), what is cut."""
    over = [c for c, n in zip(conversations, lengths) if n > max_length]
    return measure(tokenizer, over, max_length)[1] if over else []


def measure(tokenizer, conversations: list[Conversation], max_length: int) -> tuple[list[int], list[Cut]]:
    """Every conversation's token count, and what is cut of those longer than max_length: one tokenization."""
    system_role = has_system_role(tokenizer) if conversations else True
    lengths: list[int] = []
    found: list[Cut] = []
    for start in range(0, len(conversations), 256):
        batch = [(c, for_template(tokenizer, c.messages, system_role)) for c in conversations[start:start + 256]]
        texts = [tokenizer.apply_chat_template(messages, tokenize=False) for _, messages in batch]
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for (conversation, messages), text, offsets in zip(batch, texts, encoded):
            lengths.append(len(offsets))
            if len(offsets) > max_length:
                found.append(_cut(conversation.record, len(offsets), text, offsets, messages, max_length))
    return lengths, found


def _cut(record: int, length: int, text: str, offsets: list, messages: list[dict[str, str]], max_length: int) -> Cut:
    answers = _answer_spans(text, messages)
    if not answers:
        return Cut(record, length, None, None)
    ends = [end for _, end in offsets]

    def token_at(char: int) -> int:  # the token holding this character (the first one ending after it)
        return bisect.bisect_right(ends, char)

    first_start = token_at(answers[0][0])
    last_start, last_end = token_at(answers[-1][0]), token_at(max(answers[-1][1] - 1, answers[-1][0])) + 1
    if first_start >= max_length:
        outcome = "no_answer"
    elif last_start >= max_length:
        outcome = "last_answer_lost"
    elif last_end > max_length:
        outcome = "last_answer_cut"
    else:
        outcome = "end_cut"
    return Cut(record, length, first_start, outcome)


def _answer_spans(text: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Character spans of the assistant messages' contents in the rendered text, found in order; [] where some
    message's content is not in the text as given (a template that rewrites it)."""
    spans, cursor = [], 0
    for message in messages:
        start = text.find(message["content"], cursor)
        if start < 0:
            return []
        cursor = start + len(message["content"])
        if message["role"] == "assistant":
            spans.append((start, cursor))
    return spans
