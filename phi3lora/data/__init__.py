"""The data layer: chat-instruction datasets from a file or a Hugging Face hub dataset to checked Phi-3 chat
conversations. It owns reading files into rows (files.py), the five formats and their detection (formats.py), the
file's column names mapped to the formats' (columns.py), what a file holds when it is not chat data: preference
pairs, images, pre-training text, KTO labels (kinds.py), Phi-3 chat markup read back into turns (markup.py),
normalising a record to chat messages (normalise.py) and checking its turns (turns.py), with the wording of every
problem (wording.py), a conversation as the model's chat template takes it (template.py: system text where the
template has no system role), the whole read (reader.py: read_dataset), a job's file checked as its objective needs it (job_data.py:
conversations, or preference pairs), what callers do with the result (using.py: usable
conversations, chat-template text, token counts, the train/eval split, the report), what training cuts of a
conversation longer than max_length (truncation.py), copying a hub dataset into a local file (hub.py), and the types they share (dataset.py). Of phi3lora it may import only settings, errors, config and
limits; the CLI, the trainer, the jobs and the app import it, never the other way round. It never imports torch
or transformers (a tokenizer comes from the caller), nor gradio; pyarrow, datasets and huggingface_hub are imported
inside the functions that need them, so `from phi3lora import data` stays cheap.
"""
from . import hub
from .columns import TARGETS as COLUMN_TARGETS, ColumnsError, check_columns, parse_columns
from .dataset import Conversation, DatasetError, LoadedDataset, Problem, TokenStats
from .files import SUPPORTED_EXTENSIONS
from .formats import FORMATS
from .job_data import usable_examples
from .kinds import PREFERENCE, dataset_kind, is_preference
from .normalise import FUNCTION_CALL, FUNCTION_RESULT, TOOLS_HEADER
from .reader import read_dataset
from .template import SYSTEM_ROLE_NOTE, conversations_for_template, for_template, has_system_role, system_role_note
from .using import (
    render_text,
    report,
    split_train_eval,
    to_hf_dataset,
    token_lengths,
    token_stats,
    usable_conversations,
)

__all__ = [
    "COLUMN_TARGETS", "FORMATS", "FUNCTION_CALL", "FUNCTION_RESULT", "PREFERENCE", "SUPPORTED_EXTENSIONS",
    "SYSTEM_ROLE_NOTE", "TOOLS_HEADER",
    "ColumnsError", "Conversation", "DatasetError", "LoadedDataset", "Problem", "TokenStats",
    "check_columns", "conversations_for_template", "dataset_kind", "for_template", "has_system_role", "hub",
    "is_preference", "parse_columns", "read_dataset", "render_text", "report",
    "split_train_eval", "system_role_note", "to_hf_dataset", "token_lengths", "token_stats", "usable_conversations",
    "usable_examples",
]
