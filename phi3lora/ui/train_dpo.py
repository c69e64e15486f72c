"""Train tab, DPO: the finished run whose adapter DPO continues (and scores against), and the preference pairs it
trains on: the blind votes of a run ('votes of run X (N pairs)') or an uploaded preference file. Shown when the
Method is DPO; the rest of the form (epochs, learning rate, advanced settings) is the Train tab's own."""
from __future__ import annotations

import contextlib
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..data import SUPPORTED_EXTENSIONS
from ..inference.vote_pairs import export_votes, vote_pairs
from ..runs import lifecycle
from .common import method_name, shows_errors, take_upload, uploads_root
from .visitors import policy, require_run, visitor_of

VOTES = "votes:"  # a pairs choice "votes:<run id>": that run's decided blind votes
UPLOADED = "file"


@dataclass
class DpoInputs:
    group: gr.Group
    parent: gr.Dropdown
    pairs: gr.Dropdown
    upload: gr.File
    refresh_button: gr.Button

    def inputs(self) -> list[gr.Component]:
        return [self.parent, self.pairs, self.upload]


def build() -> DpoInputs:
    with gr.Group(visible=False) as group:
        gr.Markdown("DPO continues a finished run's adapter, which is also its reference, and teaches it to prefer "
                    "the chosen answer of each pair: the blind votes of the Compare tab, or a file of "
                    "prompt / chosen / rejected records (trl's layout, or LLaMA-Factory's conversations + "
                    "chosen / rejected).", padding=True)
        with gr.Row(equal_height=True):
            parent = gr.Dropdown([], label="Continue the adapter of run", scale=2)
            pairs = gr.Dropdown([], label="Preference pairs", scale=2)
            refresh_button = gr.Button("Refresh", size="sm", scale=0, min_width=90)
        upload = gr.File(label="Preference file (when 'the file uploaded here' is picked)",
                         file_types=list(SUPPORTED_EXTENSIONS))
    return DpoInputs(group, parent, pairs, upload, refresh_button)


def wire(dpo: DpoInputs, method: gr.Radio) -> None:
    private = {"api_visibility": "private"}
    method.change(lambda chosen: gr.Group(visible=chosen == "dpo"), [method], [dpo.group], **private)
    for event in (method.change, dpo.refresh_button.click):
        event(choices, [dpo.parent, dpo.pairs], [dpo.parent, dpo.pairs], **private)


@shows_errors
def choices(parent: str | None, pairs: str | None, request: gr.Request):
    """The visitor's finished runs with an adapter, and the pairs on offer: each run's votes that make pairs."""
    visitor, rules = visitor_of(request), policy()
    runs = [info for info in lifecycle.list_runs() if info.adapter and rules.owns(visitor, info.id)]
    parents = [(f"{info.id} · {method_name(info.method)} on {info.dataset}", info.id) for info in runs]
    counted = [(info.id, vote_pairs(info.id).pairs) for info in runs]
    sources = [(f"votes of run {run_id} ({count} pair{'s' if count != 1 else ''})", VOTES + run_id)
               for run_id, count in counted if count] + [("the file uploaded here", UPLOADED)]
    ids, values = [value for _, value in parents], [value for _, value in sources]
    return (gr.Dropdown(choices=parents, value=parent if parent in ids else (ids[0] if ids else None)),
            gr.Dropdown(choices=sources, value=pairs if pairs in values else values[0]))


@contextlib.contextmanager
def pairs_file(parent: str | None, pairs: str | None, upload: str | None, request: gr.Request):
    """(the pairs as a file, the note a run's lineage keeps) for the form's DPO choice, in a private folder removed
    afterwards (the run snapshots the file). The visitor must own the parent run and the run whose votes train."""
    if not parent:
        raise gr.Error("Pick the finished run whose adapter DPO continues.")
    require_run(request, parent)
    with _private_folder() as folder:
        if pairs and pairs.startswith(VOTES):
            yield votes_file(pairs.removeprefix(VOTES), folder, request)
        elif upload:
            path = take_upload(upload, folder)
            yield path, f"from the uploaded file {path.name}"
        else:
            raise gr.Error("Upload a preference file, or pick the votes of a run (vote in Compare's blind A/B first).")


def votes_file(run_id: str, folder: Path, request: gr.Request) -> tuple[Path, str]:
    """The decided votes of a run the visitor owns, exported into `folder`: (the file, what the pairs are)."""
    run_id = run_id.strip()
    require_run(request, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    found = export_votes(run_id, folder / f"votes-{run_id}.jsonl")
    return folder / f"votes-{run_id}.jsonl", found.describe()


@contextlib.contextmanager
def _private_folder():
    folder = uploads_root() / f"dpo-{secrets.token_hex(12)}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
