"""The benchmarks' training data, written by this project: chat conversations of mechanical questions (count,
tables, squares, sequences) whose answers range from a line to about 1,500 tokens, so batches mix short and long
rows as real instruction data does (padding, grouping and packing then matter, as they do for users).

    python bench/sample_data.py            # rewrites bench/data/long_answers.jsonl (deterministic)

The file is committed; the benchmarks read it, never anything outside the repository.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent / "data" / "long_answers.jsonl"
CONVERSATIONS = 128
SEED = 20261130


def _count(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(1, 500)
    end = start + int(rng.choice([8, 20, 60, 150, 300, 500]) * rng.uniform(0.7, 1.3))
    return f"Count from {start} to {end}, separated by commas.", ", ".join(map(str, range(start, end + 1))) + "."


def _table(rng: random.Random) -> tuple[str, str]:
    number, upto = rng.randint(2, 99), rng.choice([10, 12, 30, 60, 120])
    lines = [f"{number} x {k} = {number * k}" for k in range(1, upto + 1)]
    return f"Write the multiplication table of {number}, from 1 to {upto}, one line each.", "\n".join(lines)


def _squares(rng: random.Random) -> tuple[str, str]:
    howmany = rng.choice([5, 15, 40, 100, 200])
    lines = [f"{k} squared is {k * k}." for k in range(1, howmany + 1)]
    return f"List the squares of the whole numbers from 1 to {howmany}, one sentence each.", " ".join(lines)


def _steps(rng: random.Random) -> tuple[str, str]:
    start, step = rng.randint(0, 1000), rng.randint(2, 17)
    terms = rng.choice([10, 25, 80, 200, 350])
    values = [start + step * k for k in range(terms)]
    return (f"Give the first {terms} terms of the sequence that starts at {start} and grows by {step} each time.",
            "The terms are: " + ", ".join(map(str, values)) + ".")


def _short(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."


KINDS = [_count, _table, _squares, _steps, _short, _short]


def conversations(count: int = CONVERSATIONS, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        question, answer = rng.choice(KINDS)(rng)
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return rows


def write(path: Path = SAMPLE, rows: list[dict] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(row, ensure_ascii=False) for row in (rows if rows is not None else conversations()))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def longest(count: int, path: Path = SAMPLE) -> list[dict]:
    """`count` rows, the longest conversations of the sample over and over: a batch that cannot fit (the OOM check)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.sort(key=lambda row: -sum(len(m["content"]) for m in row["messages"]))
    return [rows[i % 8] for i in range(count)]


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLE))
