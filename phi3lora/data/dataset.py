"""What reading a dataset gives: the loaded dataset, its conversations, its problems, and the error a caller gets
when the data cannot be used. Plain dataclasses; nothing here reads a file."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class Problem:
    record: int | None  # 1-based record number (the line number in a .jsonl file); None for the whole file
    message: str

    def __str__(self) -> str:
        return self.message if self.record is None else f"record {self.record}: {self.message}"


class DatasetError(UserError, ValueError):
    """The project's own validation error: the message is one or more plain sentences; .problems holds the list."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems: list[Problem] = list(problems or [])


@dataclass
class Conversation:
    record: int
    messages: list[dict[str, str]]  # roles system/user/assistant only, content always a string


@dataclass
class LoadedDataset:
    path: Path
    format: str | None  # None when undetectable
    records: int  # records found in the file, good and bad
    conversations: list[Conversation]  # the good ones
    problems: list[Problem]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.conversations)


@dataclass
class TokenStats:
    count: int
    min: int
    max: int
    mean: float
    median: float
    p95: int
    max_length: int
    over_max_length: list[int]  # record numbers of the conversations longer than max_length
