"""Blind A/B votes, stored with the runs they judge, and each run's win rate.

A vote compares two contenders (the plain base, or the adapter of a run) on one prompt. It is written once, as
its own small record, into the folder of every run that took part (`runs/<id>/votes/<vote id>.json`), so a
run carries its votes with it and no two writers ever touch the same file (safe on network mounts too).

Outcomes, from the voter's side: "A", "B", "tie", "both_bad". From a run's side: win, loss, tie or both_bad.
Win rate = (wins + ties / 2) / votes: a tie is half a win, "both bad" counts as a vote not won.

A vote also keeps what was judged (the prompt and system prompt as sent, the contender's answer and its opponent's)
and whether the voter could train with the run (`by_owner`), so that its decided votes can become preference pairs
for DPO (vote_pairs.py). Votes recorded before these fields existed still count toward the win rate.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..runs import registry
from ..errors import UserError
from ..tasks import records

BASE_CONTENDER = "base"
MAX_PENDING_PAIRS = 10_000  # generated pairs awaiting their vote; the oldest are forgotten first
MAX_KEPT_CHARS = 100_000  # of a prompt or an answer: past the prompt limit's text; a longer one is cut and marked
OUTCOMES = ("A", "B", "tie", "both_bad")
Outcome = Literal["A", "B", "tie", "both_bad"]


class VoteError(UserError, ValueError):
    """A vote that cannot be recorded: an unknown outcome, or the same contender on both sides."""


@dataclass(frozen=True)
class WinRate:
    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0

    @property
    def votes(self) -> int:
        return self.wins + self.losses + self.ties + self.both_bad

    @property
    def rate(self) -> float | None:
        return (self.wins + self.ties / 2) / self.votes if self.votes else None

    def describe(self) -> str:
        if not self.votes:
            return "no votes yet"
        return (f"win rate {self.rate:.0%} over {self.votes} vote{'s' if self.votes != 1 else ''} "
                f"({self.wins} won, {self.losses} lost, {self.ties} tied, {self.both_bad} both bad)")


def _result_for(side: str, outcome: str) -> str:
    """What a vote means for the contender shown as `side` ("A" or "B")."""
    if outcome in ("tie", "both_bad"):
        return outcome
    return "win" if outcome == side else "loss"


def record_vote(a: str, b: str, outcome: Outcome, prompt: str = "", system: str = "",
                answers: tuple[str, str] | None = None, by_owner: Callable[[str], bool] | None = None) -> list[str]:
    """Store a vote between contenders `a` and `b` (run ids, or BASE_CONTENDER) with every run among them.
    `answers`: A's and B's; `by_owner(run_id)`: whether the voter may train with that run (None: yes, a local caller).

    Returns the ids of the runs the vote was stored with (none when both sides are the base)."""
    if outcome not in OUTCOMES:
        raise VoteError(f"unknown vote {outcome!r}: expected one of {', '.join(OUTCOMES)}")
    if a == b:
        raise VoteError(f"a blind vote needs two different contenders, got {a!r} twice")
    vote_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    stored = []
    texts = {"prompt": prompt or "", "system": system or ""}
    for side, contender, opponent, mine, theirs in (("A", a, b, 0, 1), ("B", b, a, 1, 0)):
        if contender == BASE_CONTENDER:
            continue
        folder = registry.run_dir(contender)  # validates the id: no path leaves the registry
        if answers is not None:
            texts |= {"answer": answers[mine] or "", "opponent_answer": answers[theirs] or ""}
        records.write_record(folder / "votes" / f"{vote_id}.json", {
            "result": _result_for(side, outcome), "shown_as": side, "opponent": opponent,
            **{name: text[:MAX_KEPT_CHARS] for name, text in texts.items()},
            "cut": any(len(text) > MAX_KEPT_CHARS for text in texts.values()),
            "by_owner": True if by_owner is None else bool(by_owner(contender)), "time": time.time(),
        })
        stored.append(contender)
    return stored


def win_rate(run_id: str) -> WinRate:
    """The tally of every vote stored with a run."""
    counts = {"win": 0, "loss": 0, "tie": 0, "both_bad": 0}
    for path in sorted((registry.run_dir(run_id) / "votes").glob("*.json")):
        record = records.read_record(path)
        if record and record.get("result") in counts:
            counts[record["result"]] += 1
    return WinRate(counts["win"], counts["loss"], counts["tie"], counts["both_bad"])


# --- one vote per generated pair ---------------------------------------------------------------------------------
# A pair of answers is generated, then voted on once. The page keeps only the pair's id; the vote consumes it under
# a lock, so a vote sent twice (or twenty times at once) counts once.

_pending: dict[str, tuple] = {}  # pair id -> record_vote's a, b, prompt, system, answers
_pending_lock = threading.Lock()


def new_pair(a: str, b: str, prompt: str, system: str = "", answers: tuple[str, str] | None = None) -> str:
    """Register a generated pair (contenders as record_vote takes them; "" for one with no run to store votes
    with; the system prompt and A's and B's answers) and return the id its single vote must quote."""
    pair_id = uuid.uuid4().hex
    with _pending_lock:
        _pending[pair_id] = (a, b, prompt, system, answers)
        while len(_pending) > MAX_PENDING_PAIRS:
            _pending.pop(next(iter(_pending)))
    return pair_id


def pair_contenders(pair_id: str) -> tuple[str, str] | None:
    """Who a pair awaiting its vote shows as A and as B (None once voted on, or unknown)."""
    with _pending_lock:
        pair = _pending.get(pair_id)
    return (pair[0], pair[1]) if pair else None


def record_pair_vote(pair_id: str, outcome: Outcome, by_owner: Callable[[str], bool] | None = None) -> list[str]:
    """The one vote on a generated pair; returns the runs it was stored with (none when a side has no run)."""
    if outcome not in OUTCOMES:
        raise VoteError(f"unknown vote {outcome!r}: expected one of {', '.join(OUTCOMES)}")
    with _pending_lock:
        pair = _pending.pop(pair_id, None)
    if pair is None:
        raise VoteError("this pair of answers has already been voted on: generate a new pair to vote again")
    a, b, prompt, system, answers = pair
    return record_vote(a, b, outcome, prompt, system, answers, by_owner) if a and b else []
