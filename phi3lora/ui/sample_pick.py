"""Data tab, the datasets that ship with the app (phi3lora.data.samples): the list with each sample's one-line
description, and for a fillable sample (identity) the Name and Maker fields whose values it is trained with.

A fillable sample is used as a filled copy in the visitor's own upload folder (a `filled/` folder of it, so no
upload of theirs is overwritten). The Train tab fills it again from the fields when it starts a run
(`as_trained`), so what the fields say is what is trained on, whichever event ran last."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..data.samples import DEFAULT_AUTHOR, DEFAULT_NAME, Sample, fill_identity, shipped_samples
from .common import session_folder, shows_errors
from .visitors import policy, visitor_of

FILLED = "filled"  # the folder of a session's upload folder that holds its filled sample


@dataclass
class SamplePicker:
    choice: gr.Dropdown
    about: gr.Markdown
    identity: gr.Group  # the Name and Maker fields, shown for a fillable sample
    name: gr.Textbox
    maker: gr.Textbox


def build() -> SamplePicker:
    samples = shipped_samples()
    choice = gr.Dropdown(list(samples), value=None, label="…or a dataset that ships with the app", interactive=True)
    about = gr.Markdown("\n".join(f"- `{file}`: {sample.what}" for file, sample in samples.items()))
    with gr.Group(visible=False) as identity:
        with gr.Row():
            name = gr.Textbox(label="Name", placeholder=DEFAULT_NAME, info="What the assistant will call itself.")
            maker = gr.Textbox(label="Maker", placeholder=DEFAULT_AUTHOR, info="Who it will say trained it.")
    return SamplePicker(choice, about, identity, name, maker)


def sample_dataset(sample: Sample, folder: Path | None, name: str | None, maker: str | None) -> dict:
    """The Data tab's dataset dict for a shipped sample; a fillable one filled in with `name` and `maker` (empty:
    the defaults) under `folder` (None: as it ships). A bad name or maker raises fill_identity's UserError."""
    if not sample.fillable or folder is None:
        return {"path": str(sample.path), "name": sample.file, "source": "ships with the app"}
    filled_dir = folder / FILLED
    if filled_dir.is_dir():  # one filled copy at a time: a started run has its own snapshot of it
        for old in filled_dir.iterdir():
            old.unlink(missing_ok=True)
    path = fill_identity(filled_dir, name or "", maker or "")
    return {"path": str(path), "name": path.name, "source": f"ships with the app ({sample.file}, your name and maker)",
            "sample": sample.file}


@shows_errors
def use_sample(file: str | None, name: str | None, maker: str | None, folder: str | None, request: gr.Request):
    """A pick from the list: the dataset, the visitor's folder, and whether the Name and Maker fields show.
    A visitor who may not train sees the sample as it ships: filling it in would write files for nothing."""
    sample = shipped_samples().get(file or "")
    if sample is None:
        raise gr.Error(f"No bundled dataset {file!r}; pick one from the list.")
    if not sample.fillable or not policy().may_train(visitor_of(request)):
        return sample_dataset(sample, None, None, None), folder, gr.Group(visible=False)
    folder = session_folder(folder)
    return sample_dataset(sample, Path(folder), name, maker), folder, gr.Group(visible=True)


@shows_errors
def refill(dataset: dict | None, name: str | None, maker: str | None):
    """After a Name or Maker edit: the sample filled in again (nothing to do for any other dataset)."""
    if not fillable(dataset):
        return gr.skip()
    return as_trained(dataset, name, maker)


def fillable(dataset: dict | None) -> bool:
    sample = shipped_samples().get((dataset or {}).get("sample") or "")
    return sample is not None and sample.fillable


def as_trained(dataset: dict | None, name: str | None, maker: str | None) -> dict | None:
    """The dataset a run starts with: a fillable sample filled in with the fields' values now (in the folder
    the Data tab filled it in: the visitor's own, known from their server-side state), any other as it is."""
    if not fillable(dataset):
        return dataset
    sample = shipped_samples()[dataset["sample"]]
    return sample_dataset(sample, Path(dataset["path"]).parent.parent, name, maker)
