"""A job's dataset, read and checked as its objective needs it, before anything starts (`runs start`, the app's
Start, `train --dry-run`): chat conversations for SFT, preference pairs for DPO (training_config.objective)."""
from __future__ import annotations

from ..config import JobConfig
from .preferences import read_preferences
from .reader import read_dataset
from .using import usable_conversations


def usable_examples(config: JobConfig) -> tuple[int, str]:
    """(how many usable examples the job's file holds, what they are in words); refuses bad data, naming records."""
    data = config.data
    if config.training_config.objective == "dpo":
        return len(read_preferences(data.path).usable(drop_invalid=data.drop_invalid)), "preference pairs"
    dataset = read_dataset(data.path, data.format, columns=data.columns)
    conversations = usable_conversations(dataset, drop_invalid=data.drop_invalid)
    return len(conversations), f"conversations in {dataset.format} format"
