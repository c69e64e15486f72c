"""Load a dataset from the Hugging Face hub, and only from the hub, into a JSONL file phi3lora reads like an upload.

`datasets.load_dataset(name)` takes a name that is also a local folder (`phi3lora_home/uploads`, `./x`, `x/..`)
for that folder, and a builder name (`json`, `csv`...) for the files under the working directory: on a shared
server, other users' uploads. So a hub id never goes to `load_dataset` as it was typed:

1. huggingface_hub validates it (`owner/name`, no `.`/`..` segments, no paths) and resolves it to a dataset
   repository and one commit; a name that is no repository there goes no further.
2. datasets reads `hf://datasets/<repository>` at that commit, which it never looks for on the disk, and every
   data file it resolves must lie in that repository (a dataset card can name absolute paths as data files).
3. Second guard, should a later datasets release change its rules: a name that also exists on this disk, or a
   repository without an owner (a builder name), is refused.

No gradio here: the Data tab and the CLI (`--data hub:owner/name[:split]`) both call `fetch`, which copies the
dataset into a folder of theirs as a JSONL file that the rest of phi3lora reads like an upload.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .. import settings
from ..errors import UserError, shorten

log = logging.getLogger(__name__)

SPLIT = re.compile(r"^\w+(\.\w+)*$")  # datasets' own rule for split names
DEFAULT_SPLIT = "train"
MAX_ROWS = 100_000  # rows copied from a hub dataset at most


class HubDatasetError(UserError):
    """The id cannot be loaded from the hub; the message says why, and never where anything is on this server."""


@dataclass(frozen=True)
class HubDataset:
    repo_id: str  # as the hub names the repository
    split: str
    rows: int  # written to the target file
    truncated: bool  # stopped at max_rows or max_bytes
    path: Path  # the target file

    @property
    def name(self) -> str:
        return f"{self.repo_id}:{self.split}"


def fetch(dataset_id: str, folder: str | Path, max_rows: int = MAX_ROWS, max_bytes: int | None = None) -> HubDataset:
    """Copy hub dataset `owner/name[:split]` into `folder` as a JSONL file named by `file_name` (HubDataset.path),
    at most `max_rows` rows and `max_bytes` bytes (default: $PHI3LORA_MAX_UPLOAD_MB, what an upload may weigh)."""
    if max_bytes is None:
        max_bytes = int(settings.get_float("PHI3LORA_MAX_UPLOAD_MB") * 1024 * 1024)
    return load_hub_dataset(dataset_id, Path(folder) / file_name(dataset_id), max_rows, max_bytes)


def load_hub_dataset(dataset_id: str, target_file: str | Path, max_rows: int, max_bytes: int) -> HubDataset:
    """Write the first rows of hub dataset `owner/name` (or `owner/name:split`, default split train) to
    `target_file` as JSON Lines, at most `max_rows` rows and `max_bytes` bytes."""
    repo_id, split = parse_dataset_id(dataset_id)
    shown = shorten(dataset_id.strip(), as_repr=False)
    info = resolve_repository(repo_id, shown)
    rows = _hub_errors_explained(shown, lambda: open_split(info.id, info.sha, split or DEFAULT_SPLIT, shown))
    target = Path(target_file)
    try:
        written, truncated = _hub_errors_explained(shown, lambda: write_jsonl(rows, target, max_rows, max_bytes))
    except BaseException:
        target.unlink(missing_ok=True)  # no half-written dataset left to pick up
        raise
    return HubDataset(info.id, split or DEFAULT_SPLIT, written, truncated, target)


def file_name(dataset_id: str) -> str:
    """A file name for the dataset's JSONL copy (`owner__name__split.jsonl`); the id is validated first."""
    repo_id, split = parse_dataset_id(dataset_id)
    return repo_id.replace("/", "__") + (f"__{split}" if split else "") + ".jsonl"


# --- what the id names -------------------------------------------------------------------------------------------

def parse_dataset_id(text: str | None) -> tuple[str, str | None]:
    """`owner/name` or `owner/name:split` -> (repository id, split or None). Anything else is refused, paths
    included: huggingface_hub's own rules allow no `/` at either end, no `.`, `..` or `--`, at most one `/`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    text = (text or "").strip()
    repo_id, colon, split = text.partition(":")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise not_a_hub_id(text) from None
    if colon and not SPLIT.match(split):
        raise not_a_hub_id(text)
    return repo_id, split or None


def resolve_repository(repo_id: str, shown: str):
    """The hub's dataset repository `repo_id` (its canonical id and current commit), or a refusal."""
    from huggingface_hub import HfApi

    # token=False: a visitor's id is looked up as an anonymous caller, never with the server's own HF_TOKEN (which
    # may reach the operator's private datasets)
    info = _hub_errors_explained(shown, lambda: HfApi(token=False).dataset_info(repo_id))
    if "/" not in info.id or exists_locally(repo_id) or exists_locally(info.id):
        # Without an owner, datasets takes the name for a builder reading the working directory ("json").
        raise not_on_the_hub(shown)
    return info


def exists_locally(name: str) -> bool:
    """Whether `name` means something on this disk, seen from the working directory (where datasets looks)."""
    try:
        return os.path.lexists(name)
    except (OSError, ValueError):
        return True  # cannot tell: treat it as local


# --- reading it --------------------------------------------------------------------------------------------------

def open_split(repo_id: str, commit: str, split: str, shown: str):
    """The split's rows, streamed from the repository at `commit`, media left undecoded (a decoded image or audio
    feature would open whatever path a row names)."""
    import datasets

    builder = datasets.load_dataset_builder(f"hf://datasets/{repo_id}", revision=commit, token=False)
    data_files = builder.config.data_files or {}
    refuse_files_outside(data_files, repo_id, commit, shown)
    if split not in data_files:
        splits = ", ".join(sorted(data_files)) or "none"
        raise HubDatasetError(f"Cannot load {shown!r} from the Hugging Face hub: it has no split {split!r} "
                              f"(its splits: {shorten(splits, as_repr=False)}); name one after a colon, as in "
                              "owner/name:split.")
    rows = builder.as_streaming_dataset(split=split)
    return rows if rows.features is None else rows.decode(False)  # unknown features: nothing is decoded anyway


def refuse_files_outside(data_files: dict, repo_id: str, commit: str, shown: str) -> None:
    """Every data file must lie in the repository at that commit: a dataset card may list `/any/path/*.jsonl`
    or `file://...` as data files, and datasets would read them from this server's disk."""
    prefix = f"hf://datasets/{repo_id}@{commit}/"
    for files in data_files.values():
        for url in files:
            url = str(url)
            if not url.startswith(prefix) or ".." in PurePosixPath(url[len(prefix):]).parts:
                log.warning("hub dataset %s names a data file outside its repository: %s", repo_id, url)
                raise HubDatasetError(f"Cannot load {shown!r}: its dataset card names data files outside its "
                                      "repository, which this server does not read.")


def write_jsonl(rows, target: Path, max_rows: int, max_bytes: int) -> tuple[int, bool]:
    """(rows written, whether a limit stopped the writing)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = size = 0
    with open(target, "w", encoding="utf-8") as out:
        for row in itertools.islice(rows, max_rows + 1):
            line = json.dumps(row, ensure_ascii=False, default=str) + "\n"
            size += len(line.encode())
            if written == max_rows or size > max_bytes:
                return written, True
            out.write(line)
            written += 1
    return written, False


# --- messages ----------------------------------------------------------------------------------------------------

def not_a_hub_id(text: str) -> HubDatasetError:
    if not text:
        return HubDatasetError("Enter a Hugging Face dataset id: owner/name, optionally owner/name:split.")
    return HubDatasetError(f"{shorten(text, as_repr=False)!r} is not a Hugging Face dataset id: enter owner/name, "
                           "optionally owner/name:split.")


def not_on_the_hub(shown: str) -> HubDatasetError:
    # The same words whether the name exists on this disk or nowhere: the answer tells nothing about the server.
    return HubDatasetError(f"{shown!r} is not a Hugging Face dataset id this server can load: there is no such "
                           "dataset on the hub, or it is private or gated.")


def unreachable(shown: str) -> HubDatasetError:
    return HubDatasetError(f"Cannot load {shown!r}: the Hugging Face hub could not be reached from this server. "
                           "Download the dataset yourself and upload the file instead.")


def _hub_errors_explained(shown: str, call):
    """Run `call`, turning what the hub and datasets raise into one plain message each. Their own texts are
    not shown: they can hold the server's cache paths."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, HTTPError, RepositoryNotFoundError

    try:
        return call()
    except HubDatasetError:
        raise
    except HFValidationError:
        raise not_a_hub_id(shown) from None
    except (RepositoryNotFoundError, DatasetNotFoundError):  # gated and disabled repositories included
        raise not_on_the_hub(shown) from None
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", "?")
        raise HubDatasetError(f"Cannot load {shown!r}: the Hugging Face hub answered with an error "
                              f"(HTTP {status}); try again later.") from None
    except FileNotFoundError:  # datasets' "no data files" and "empty dataset" errors are kinds of it
        raise HubDatasetError(f"Cannot load {shown!r}: it holds no data files this app can read "
                              "(.jsonl, .json, .csv, .parquet...).") from None
    except (HTTPError, ConnectionError, TimeoutError):  # offline mode included (OfflineModeIsEnabled)
        raise unreachable(shown) from None
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds for a repository it cannot read
        log.warning("cannot load hub dataset %s", shown, exc_info=True)
        raise HubDatasetError(f"Cannot load {shown!r} from the Hugging Face hub: its files could not be read as "
                              f"a dataset ({type(error).__name__}).") from None
