"""What the trainer, the CLI and the app do with a loaded dataset: take its usable conversations (or refuse it
with every problem listed), render them with the chat template, count their tokens, split train and eval, hand
them to datasets, and summarise it all as a JSON-ready report (with what training cuts of the longest ones:
truncation.py). The tokenizer comes from the caller; datasets is imported only when a conversation list becomes a
datasets.Dataset.
"""
from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict
from pathlib import Path

from ..config import DEFAULT_MAX_LENGTH, eval_size_problem
from ..errors import shorten
from .dataset import Conversation, DatasetError, LoadedDataset, Problem, TokenStats
from .template import for_template, has_system_role, system_role_note
from .truncation import KEEPS, OUTCOMES, cuts, measure

MAX_LISTED_PROBLEMS = 20  # a refusal lists this many problems, then how many more


def usable_conversations(ds: LoadedDataset, drop_invalid: bool = False) -> list[Conversation]:
    """The good conversations; refuses a dataset with problems unless drop_invalid, and one with none left."""
    return usable_records(ds.path, ds.conversations, ds.problems, "conversations", drop_invalid)


def usable_records(path: Path, good: list, problems: list[Problem], what: str, drop_invalid: bool) -> list:
    """The good records of a file (`what`: "conversations", "preference pairs"); refuses a file with problems
    unless drop_invalid, and one with none left, listing the first problems."""
    if not good:
        raise DatasetError(f"{path.name} has no usable {what}:\n{_listed(problems)}", problems)
    if problems and not drop_invalid:
        raise DatasetError(
            f"{path.name} has {len(problems)} problem(s):\n{_listed(problems)}\n"
            "Fix them, or pass drop_invalid / --drop-invalid to skip the invalid records.",
            problems,
        )
    return list(good)


def _listed(problems: list[Problem]) -> str:
    lines = [f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)


def render_text(tokenizer, messages: list[dict[str, str]], system_role: bool | None = None) -> str:
    """The conversation as the model sees it in training: the tokenizer's chat template, untokenised, with system
    text in the first user message where the template has no system role (`system_role`: has_system_role, if known)."""
    return tokenizer.apply_chat_template(for_template(tokenizer, messages, system_role), tokenize=False)


def token_lengths(tokenizer, conversations: list[Conversation]) -> list[int]:
    """Tokens of each rendered conversation (the template adds the special tokens itself), in order."""
    lengths: list[int] = []
    system_role = has_system_role(tokenizer) if conversations else True
    for start in range(0, len(conversations), 256):
        batch = [render_text(tokenizer, c.messages, system_role) for c in conversations[start:start + 256]]
        lengths += [len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]]
    return lengths


def token_stats(tokenizer, conversations: list[Conversation], max_length: int,
                lengths: list[int] | None = None) -> TokenStats:
    """Statistics of the conversations' token lengths; `lengths`: token_lengths(tokenizer, conversations) when
    the caller has counted them already."""
    lengths = token_lengths(tokenizer, conversations) if lengths is None else lengths
    over = [c.record for c, length in zip(conversations, lengths) if length > max_length]
    if not lengths:
        return TokenStats(0, 0, 0, 0.0, 0.0, 0, max_length, over)
    ordered = sorted(lengths)
    p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]  # nearest rank
    return TokenStats(len(lengths), ordered[0], ordered[-1], round(statistics.fmean(lengths), 1),
                      statistics.median(ordered), p95, max_length, over)


def split_train_eval(
    conversations: list[Conversation], eval_size: float | int, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """A seeded random split; both parts keep the file's order.

    eval_size below 1 is a fraction (rounded, at least 1), from 1 up a count; 0 means no eval split. The train
    split always keeps at least one conversation, so a large eval_size is capped at all but one."""
    count = len(conversations)
    wanted = _eval_count(eval_size, count)
    n_eval = min(wanted, count - 1) if count else 0
    chosen = set(random.Random(seed).sample(range(count), n_eval))
    train = [c for i, c in enumerate(conversations) if i not in chosen]
    evaluation = [c for i, c in enumerate(conversations) if i in chosen]
    return train, evaluation


def _eval_count(eval_size: float | int, count: int) -> int:
    problem = eval_size_problem(eval_size)  # the check data.eval_size makes, for callers without a JobConfig
    if problem:
        raise DatasetError(f"eval_size {problem} (got {shorten(eval_size)})")
    if eval_size == 0:
        return 0
    if eval_size < 1:
        return max(1, round(eval_size * count))
    return int(eval_size)


def to_hf_dataset(conversations: list[Conversation]):
    """A datasets.Dataset with one column, "messages": what trl's SFTTrainer takes."""
    import datasets

    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    features = datasets.Features({"messages": datasets.List(message)})
    return datasets.Dataset.from_dict({"messages": [c.messages for c in conversations]}, features=features)


def report(ds: LoadedDataset, tokenizer=None, max_length: int = DEFAULT_MAX_LENGTH, lengths: list[int] | None = None) -> dict:
    """A JSON-ready summary: counts, problems, warnings, notes (how the tokenizer's template takes the data) and
    (with a tokenizer) token statistics, with what training cuts of each conversation over max_length
    (tokens.cut, truncation.py); `lengths` as for token_stats."""
    tokens = None
    if tokenizer is not None:
        if lengths is None:
            lengths, found = measure(tokenizer, ds.conversations, max_length)  # one pass: counts and cuts
        else:
            found = cuts(tokenizer, ds.conversations, lengths, max_length)
        tokens = asdict(token_stats(tokenizer, ds.conversations, max_length, lengths))
        tokens["keeps"] = KEEPS
        tokens["cut"] = [asdict(cut) for cut in found]
        tokens["cut_outcomes"] = {outcome: sum(cut.outcome == outcome for cut in found) for outcome in OUTCOMES}
    note = system_role_note(tokenizer, ds.conversations) if tokenizer is not None else None
    return {
        "path": str(ds.path),
        "format": ds.format,
        "records": ds.records,
        "conversations": len(ds.conversations),
        "ok": ds.ok,
        "errors": [{"record": p.record, "message": p.message} for p in ds.problems],
        "warnings": list(ds.warnings),
        "notes": [note] if note else [],
        "tokens": tokens,
    }
