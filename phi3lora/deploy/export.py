"""Merge a LoRA adapter into its base model and save the result as a standalone model (no peft needed to load it).

Two ways in:
    merge_and_save(adapter_dir, out_dir)   in the foreground (`python -m phi3lora export --adapter DIR --output DIR`);
    start_export(run_id)                   in the background, for the app: a merge needs a whole copy of the base in
                                           memory for minutes, so it runs in its own process, never in the web process.

Either way the merge runs on the CPU, in the precision of the run's base (bf16 or fp16 on a GPU machine): it needs
no GPU memory, so it never competes with training or the chat model for it (tasks/gpu_memory.py).

A background export of a run is a task (tasks/machine.py) in the run folder, one folder per export, holding the
task's records (queued.json ... exit.json, export.log) and its result:

    <run>/exports/<n>/
        model/           the merged model: config, model.safetensors, tokenizer, generation config, README.md
        onnx/            or, for an ONNX export (onnx_export.py), what onnxruntime_genai.Model loads, and beside it
        verify.json      its answers and speed against torch's (onnx_verify.py)

This module imports no torch at import time, so the CLI's parser and the app's status polling stay cheap.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..runs import registry
from . import onnx_export
from .merge import ExportError, merge_and_save
from ..tasks import machine
from ..tasks.machine import ACTIVE, COMPLETED
from ..tasks.kinds import KINDS
from ..tasks.records import is_recent, read_record


FORMATS = ("merged", "onnx")  # a transformers model; ONNX Runtime GenAI's (onnx_export.py)


# --- background exports of a run ------------------------------------------------------------------------------

def exports_dir(run_id: str) -> Path:
    return registry.run_dir(run_id) / "exports"  # run_dir validates the id (no path gets in) and that the run exists


def start_export(run_id: str, dtype: str | None = None, format: str = "merged", precision: str = "int4",
                 device: str = "cpu", verify: bool = True) -> str:
    """Start merging a run's adapter into its base in a separate process; returns the export's number (a string).
    format "onnx" converts the merge for ONNX Runtime GenAI (onnx_export.py: `precision`, `device`, and `verify`
    against torch). Refused while the run has no finished adapter, and while another export of the run is still going."""
    path = registry.run_dir(run_id)
    _check_exportable(run_id, path)
    if format not in FORMATS:
        raise ExportError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    if format == "onnx":
        onnx_export.check_request(precision, device)  # missing packages are refused here, with the install command
    for other in export_status(run_id):
        if other["status"] in ACTIVE:
            raise ExportError(f"run {run_id} is already being exported (export {other['export']}): "
                              "wait for it to finish")
    folder = _new_export_folder(path / "exports")
    onnx = {"format": "onnx", "precision": precision, "device": device, "verify": verify} if format == "onnx" else {}
    machine.submit(folder, "export", run=run_id, dtype=dtype, **onnx,
                   needs_bitsandbytes=False)  # a QLoRA adapter merges into its base at full precision (merge_and_save)
    return folder.name


def _check_exportable(run_id: str, path: Path) -> None:
    if problem := registry.adapter_problem(run_id, path, "export", "export its adapter"):
        raise ExportError(problem)


def _new_export_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    number = max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0) + 1
    while True:
        try:
            (root / str(number)).mkdir()  # mkdir either creates or fails: two callers never get the same folder
            return root / str(number)
        except FileExistsError:
            number += 1


def export_info(run_id: str, number: str | int) -> dict[str, Any]:
    """One export's state: {export, status, reason, path, requested_at, finished_at, log, format, precision,
    verify}, from its task records. status: a task status (queued, running, completed, failed, cancelled,
    interrupted); verify: an ONNX export's check against torch (onnx_verify.py), once done."""
    if not str(number).isdigit():
        raise ExportError(f"{number!r} is not an export number (they count 1, 2, 3, ...)")
    folder = exports_dir(run_id) / str(int(number))
    state = machine.state(folder)
    if state is None and not folder.is_dir():
        raise ExportError(f"run {run_id} has no export {number}")
    state = state or _without_a_task(folder)
    final = read_record(folder / "exit.json") or read_record(folder / "done.json") or {}
    request = read_record(folder / "queued.json") or {}
    onnx = request.get("format") == "onnx"
    return {
        "export": folder.name, "status": state.status, "reason": state.reason,
        "path": str(folder / (onnx_export.ONNX_FOLDER if onnx else "model")) if state.status == COMPLETED else None,
        "requested_at": request.get("queued_at"),
        "finished_at": final.get("finished_at"), "log": str(folder / "export.log"),
        "format": request.get("format", "merged"), "precision": request.get("precision"),
        "verify": read_record(folder / "verify.json"),
    }


def _without_a_task(folder: Path) -> machine.TaskState:
    """An export folder that holds no task records: one being created this very moment (queued), one written before
    exports were tasks (its done.json says how it ended), or one whose request was never written (interrupted)."""
    legacy = read_record(folder / "done.json")
    if legacy:
        return machine.TaskState(legacy["status"], legacy.get("reason"))
    if is_recent(folder, machine.STARTING_GRACE_SECONDS):
        return machine.TaskState(machine.QUEUED)
    return machine.TaskState(machine.INTERRUPTED, "it was never started (the app stopped while creating it): "
                                                  f"{KINDS['export'].retry}")


def export_status(run_id: str) -> list[dict[str, Any]]:
    """Every export of a run, oldest first (see export_info)."""
    root = exports_dir(run_id)
    numbers = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
    return [export_info(run_id, n) for n in numbers]


def wait_for_export(run_id: str, number: str | int, timeout: float | None = None) -> dict[str, Any]:
    """Block until the export has finished (or the timeout passes); returns its latest state either way."""
    export_info(run_id, number)  # checks the number
    machine.wait(exports_dir(run_id) / str(int(number)), timeout)
    return export_info(run_id, number)


def run_task(folder: Path, request: dict[str, Any]) -> None:
    """The body of an export task (tasks/kinds.py "export"): merge; a half-written model is removed on failure."""
    if request.get("format") == "onnx":
        return onnx_export.run_task(folder, request)
    model_dir = folder / "model"
    try:
        merge_and_save(registry.run_dir(request["run"]), model_dir, dtype=request.get("dtype"))
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)  # a half-written model is worse than none (and large)
        raise
