"""A run's blind A/B votes as preference pairs for DPO: each decided vote (one answer won) is a pair of the prompt
and system prompt as the user sent them, the winner's answer as chosen and the loser's as rejected.

Left out, and counted so the user sees what the pairs stand on: ties and "both bad" (no preference), votes
recorded before votes kept their answers, votes whose texts were cut, votes whose two answers were the same, and
votes by visitors who may not train with the run (a published run's public chat must not steer its training).
The pairs are written in trl's conversational layout, which `data.preferences` reads back.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..data.preferences import PreferencePair, to_dpo_rows
from ..errors import UserError
from ..runs import registry
from ..tasks import records

LEFT_OUT = {  # count name -> how the user reads it
    "ties": "tied", "both_bad": "both bad", "without_answers": "recorded before votes kept their answers",
    "cut": "with texts too long to keep whole", "same_answers": "with the same answer on both sides",
    "by_others": "by visitors who may not train with this run",
}


class NoVotePairs(UserError, ValueError):
    """A run whose votes give no preference pair."""


@dataclass
class VotePairs:
    run_id: str
    rows: list[dict] = field(default_factory=list)  # trl conversational: prompt, chosen, rejected
    left_out: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEFT_OUT, 0))

    @property
    def pairs(self) -> int:
        return len(self.rows)

    def describe(self) -> str:
        """`3 pairs from the votes of run X (2 tied and 1 both bad left out)`."""
        left = [f"{count} {LEFT_OUT[name]}" for name, count in self.left_out.items() if count]
        return (f"{self.pairs} pair{'s' if self.pairs != 1 else ''} from the votes of run {self.run_id}"
                + (f" ({', '.join(left)} left out)" if left else ""))


def vote_pairs(run_id: str) -> VotePairs:
    """Every decided vote stored with the run, as a pair; what is left out, counted."""
    found = VotePairs(run_id)
    for path in sorted((registry.run_dir(run_id) / "votes").glob("*.json")):
        vote = records.read_record(path)
        if not isinstance(vote, dict) or vote.get("result") not in ("win", "loss", "tie", "both_bad"):
            continue
        reason = _left_out_because(vote)
        if reason:
            found.left_out[reason] += 1
            continue
        won = vote["result"] == "win"
        chosen, rejected = (vote["answer"], vote["opponent_answer"]) if won else (vote["opponent_answer"], vote["answer"])
        system = vote.get("system") or ""
        prompt = ([{"role": "system", "content": system}] if system.strip() else []) + [
            {"role": "user", "content": vote["prompt"]}]
        found.rows += to_dpo_rows([PreferencePair(len(found.rows) + 1, prompt, chosen, rejected)])
    return found


def _left_out_because(vote: dict) -> str | None:
    if vote["result"] in ("tie", "both_bad"):
        return vote["result"] + ("s" if vote["result"] == "tie" else "")
    texts = [vote.get(name) for name in ("prompt", "answer", "opponent_answer")]
    if not all(isinstance(text, str) and text.strip() for text in texts):
        return "without_answers"
    if vote.get("cut"):
        return "cut"
    if texts[1].strip() == texts[2].strip():
        return "same_answers"
    if vote.get("by_owner") is False:
        return "by_others"
    return None


def export_votes(run_id: str, output: str | Path) -> VotePairs:
    """Write the run's vote pairs to `output` (JSONL, one pair a line; replaced whole). Refuses a run with none."""
    found = vote_pairs(run_id)
    if not found.rows:
        raise NoVotePairs(f"no preference pairs: {found.describe()}; vote on blind pairs in the Compare tab (one "
                          "answer better than the other) first")
    output = Path(output)
    partial = output.with_name(f".{output.name}.{os.getpid()}")
    with open(partial, "w", encoding="utf-8") as file:
        for row in found.rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, output)
    return found
