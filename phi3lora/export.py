"""Merge a LoRA adapter into its base model and save the result as a standalone model (no peft needed to load it).

Two ways in:
    merge_and_save(adapter_dir, out_dir)   in the foreground (`python -m phi3lora export --adapter DIR --output DIR`);
    start_export(run_id)                   in the background, for the app: a merge needs a whole copy of the base in
                                           memory for minutes, so it runs in its own process, never in the web process.

A background export of a run lives in the run folder, one folder per export (each record written once, by one writer,
like the rest of the registry; see runs.py):

    <run>/exports/<n>/
        request.json     what was asked, when (caller)
        process.json     pid + start time of the export process (caller)
        export.log       the export process's stdout and stderr (a file, never a pipe)
        done.json        the final word: status completed|failed, reason, path, finished_at (export process)
        model/           the merged model: config, model.safetensors, tokenizer, generation config, README.md

This module imports no torch at import time, so the CLI's parser and the app's status polling stay cheap.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import runs
from .errors import UserError
from .runs import COMPLETED, FAILED, INTERRUPTED, QUEUED, RUNNING, read_record, write_record

STARTING_GRACE_SECONDS = 30.0  # between request.json and process.json the export counts as starting, not lost


class ExportError(UserError, ValueError):
    """An export cannot be done (no adapter yet, the run still training, the output folder not empty, ...)."""


# --- the merge itself ---------------------------------------------------------------------------------------

def merge_and_save(adapter_dir: str | Path, out_dir: str | Path, log: Callable[[str], Any] = print,
                   dtype: str | None = None) -> Path:
    """Load the base the adapter was trained on, merge the LoRA weights into it, and save a plain transformers model
    (safetensors weights, tokenizer, generation config, README.md) into `out_dir`. Returns `out_dir`.

    `dtype` (auto, bfloat16, float16, float32) overrides the precision the run used: by default the merged model is
    saved in the precision the base loads in for that run (bf16 or fp16 on a GPU, fp32 on a CPU)."""
    from peft import PeftModel

    from .compare import AdapterError, adapter_settings
    from .modeling import choose_base_model, load_base_model, load_tokenizer, resolve_dtype, stop_token_ids

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base_name, settings = adapter_settings(adapter_dir, check_base=False)  # a run's, or a folder its operator named
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise AdapterError(f"{adapter_dir.name} holds no adapter weights (adapter_model.safetensors is missing): "
                           "has its training finished?")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists and is not empty: choose a new output folder")

    # A QLoRA adapter was trained against a 4-bit NF4 base, but merging into 4-bit weights would round the LoRA
    # update away (and peft cannot save a merged 4-bit model as a plain one). So the base is reloaded in its normal
    # precision, never 4-bit, and the adapter merged into that: the usual way to export a QLoRA run.
    method = "qlora" if settings.load_in_4bit else "lora"
    settings = settings.model_copy(update={"load_in_4bit": False, **({"dtype": dtype} if dtype else {})})
    base = choose_base_model(base_name)
    precision = str(resolve_dtype(settings.dtype)).removeprefix("torch.")
    log(f"base model: {base}; loading it in {precision}"
        + (" (a QLoRA adapter merges into the full-precision base, not the 4-bit one)" if method == "qlora" else ""))
    tokenizer = load_tokenizer(base.name_or_path, settings.trust_remote_code)
    model = load_base_model(settings, base.name_or_path)

    log(f"merging the adapter in {adapter_dir}")
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.eval()
    model.config.use_cache = True  # training may have turned the cache off (gradient checkpointing)
    # plain `generate` on the merged model stops at the end of the assistant's turn, as phi3lora's own generation does
    stops = model.generation_config.eos_token_id
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    model.generation_config.eos_token_id = list(dict.fromkeys(stops + stop_token_ids(tokenizer)))
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"saving the merged model to {out_dir}")
    model.save_pretrained(str(out_dir))  # safetensors (transformers never writes pickles unless asked)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "README.md").write_text(_readme(base, adapter_dir, method, precision, out_dir), encoding="utf-8")
    log(f"done: {out_dir} loads with transformers' AutoModelForCausalLM.from_pretrained, no peft needed")
    return out_dir


def _readme(base, adapter_dir: Path, method: str, precision: str, out_dir: Path) -> str:
    run = read_record(adapter_dir / "run.json") or {}
    base_name = "the phi3lora demo model (a tiny Phi-3, phi3lora/demo_model)" if base.is_demo else base.name_or_path
    trained = f"phi3lora run {run['id']} ({adapter_dir})" if run.get("id") else str(adapter_dir)
    return f"""# Merged model: {base_name} + LoRA adapter

This folder is a complete model: the base model with the LoRA adapter's low-rank updates merged into its weights
(peft `merge_and_unload`). It loads with plain transformers, without peft:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{out_dir}")
tokenizer = AutoTokenizer.from_pretrained("{out_dir}")
```

- base model: {base_name}
- adapter: {trained}, trained with {"QLoRA" if method == "qlora" else "LoRA"}
- precision: {precision}{" (a QLoRA adapter is merged into the full-precision base, not the 4-bit one)" if method == "qlora" else ""}
- merged: {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())} by phi3lora

The base model's license applies to this model.
"""


# --- background exports of a run ------------------------------------------------------------------------------

def exports_dir(run_id: str) -> Path:
    return runs.run_dir(run_id) / "exports"  # run_dir validates the id (no path gets in) and that the run exists


def start_export(run_id: str, dtype: str | None = None) -> str:
    """Start merging a run's adapter into its base in a separate process; returns the export's number (a string).
    Refused while the run has no finished adapter, and while another export of the run is still going."""
    path = runs.run_dir(run_id)
    _check_exportable(run_id, path)
    for other in export_status(run_id):
        if other["status"] == RUNNING:
            raise ExportError(f"run {run_id} is already being exported (export {other['export']}): "
                              "wait for it to finish")
    folder = _new_export_folder(path / "exports")
    write_record(folder / "request.json", {"run": run_id, "requested_at": time.time(), "dtype": dtype})
    command = [sys.executable, "-m", "phi3lora", "export", "--run", run_id, "--attempt", folder.name]
    write_record(folder / "process.json", {**runs.start_detached(command, folder / "export.log"), "command": command})
    return folder.name


def _check_exportable(run_id: str, path: Path) -> None:
    status = runs.current_status(path)
    if status in (QUEUED, RUNNING):
        raise ExportError(f"run {run_id} is {status}: export its adapter once training has finished")
    if not runs.has_adapter(path):
        raise ExportError(f"run {run_id} has no adapter yet" + (f" (its training ended {status})" if status else "")
                          + ": there is nothing to export")


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
    """One export's state: {export, status, reason, path, requested_at, finished_at, log}, from its records alone.
    status: running, completed, failed, or interrupted (its process is gone without a final word)."""
    if not str(number).isdigit():
        raise ExportError(f"{number!r} is not an export number (they count 1, 2, 3, ...)")
    folder = exports_dir(run_id) / str(int(number))
    request = read_record(folder / "request.json")
    if request is None and not folder.is_dir():
        raise ExportError(f"run {run_id} has no export {number}")
    done = read_record(folder / "done.json")
    process = read_record(folder / "process.json")
    if done:
        status, reason = done["status"], done.get("reason")
    elif runs.is_alive(process):
        status, reason = RUNNING, None
    elif process is None and runs.is_recent(folder, STARTING_GRACE_SECONDS):
        status, reason = RUNNING, None  # the caller is starting the export process this very moment
    else:
        status, reason = INTERRUPTED, ("its process is gone without finishing (the machine or the app restarted, or "
                                       "it ran out of memory): see export.log, and start the export again")
    return {
        "export": folder.name, "status": status, "reason": reason,
        "path": (done or {}).get("path") if status == COMPLETED else None,
        "requested_at": (request or {}).get("requested_at"), "finished_at": (done or {}).get("finished_at"),
        "log": str(folder / "export.log"),
    }


def export_status(run_id: str) -> list[dict[str, Any]]:
    """Every export of a run, oldest first (see export_info)."""
    root = exports_dir(run_id)
    numbers = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
    return [export_info(run_id, n) for n in numbers]


def wait_for_export(run_id: str, number: str | int, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
    """Block until the export is no longer running (or the timeout passes); returns its latest state either way."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = export_info(run_id, number)
        if info["status"] != RUNNING or (deadline is not None and time.monotonic() >= deadline):
            return info
        time.sleep(poll)


def run_export(run_id: str, number: str) -> int:
    """Body of the export process: merge, then write done.json whatever happens (short of being killed)."""
    path = runs.run_dir(run_id)
    folder = path / "exports" / str(int(number))
    request = read_record(folder / "request.json") or {}
    model_dir = folder / "model"
    status, reason = FAILED, None
    try:
        merge_and_save(path, model_dir, dtype=request.get("dtype"))
        status = COMPLETED
    except UserError as error:
        reason = str(error)
    except MemoryError:
        reason = "out of memory: merging needs the whole base model in memory at full precision"
    except Exception as error:  # noqa: BLE001 - anything else is reported, then shown in full in export.log
        reason = f"{type(error).__name__}: {error}"
        if "out of memory" in str(error).lower():
            reason = f"out of memory: merging needs the whole base model in memory at full precision ({reason})"
        import traceback

        traceback.print_exc()
    if status == FAILED:
        shutil.rmtree(model_dir, ignore_errors=True)  # a half-written model is worse than none (and large)
        print(f"error: {reason}", file=sys.stderr, flush=True)
    write_record(folder / "done.json", {"status": status, "reason": reason,
                                        "path": str(model_dir) if status == COMPLETED else None,
                                        "finished_at": time.time()})
    return 0 if status == COMPLETED else 1


# --- command line -------------------------------------------------------------------------------------------------

def add_export_command(subparsers) -> None:
    """Register `export` on the CLI's subparsers (phi3lora/cli.py)."""
    parser = subparsers.add_parser(
        "export", help="merge an adapter into its base model and save a standalone model (loads without peft)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="adapter folder (a run's --output): merge it now, into --output")
    source.add_argument("--run", dest="run_id", metavar="RUN_ID", help="run id: merge its adapter in the background into <run>/exports/<n>/model "
                                      "(prints n; follow it with --status)")
    parser.add_argument("--output", help="with --adapter: a new or empty folder for the merged model")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"],
                        help="precision of the merged model (default: the run's; fp32 on a CPU)")
    parser.add_argument("--status", action="store_true", help="with --run: list the run's exports and their state")
    parser.add_argument("--wait", action="store_true", help="with --run: wait for the export to finish")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--attempt", help=argparse.SUPPRESS)  # set by start_export for the background process
    parser.set_defaults(run=_export_command)


def _export_command(args) -> int:
    if args.adapter:
        if not args.output:
            raise ExportError("--adapter needs --output: the folder to write the merged model to")
        out = merge_and_save(args.adapter, args.output, dtype=args.dtype)
        print(json.dumps({"path": str(out)}) if args.json else f"merged model in {out}")
        return 0
    if args.attempt:
        return run_export(args.run_id, args.attempt)
    if args.status:
        infos = export_status(args.run_id)
        if args.json:
            print(json.dumps(infos))
        for info in infos if not args.json else []:
            print(f"export {info['export']}: {info['status']}" + (f" ({info['reason']})" if info["reason"] else "")
                  + (f" -> {info['path']}" if info["path"] else ""))
        return 0
    number = start_export(args.run_id, dtype=args.dtype)
    if not args.wait:
        print(json.dumps({"run": args.run_id, "export": number}) if args.json else f"export {number} of {args.run_id} started")
        return 0
    info = wait_for_export(args.run_id, number)
    print(json.dumps(info) if args.json else f"export {number}: {info['status']}"
          + (f" ({info['reason']})" if info["reason"] else "") + (f" -> {info['path']}" if info["path"] else ""))
    return 0 if info["status"] == COMPLETED else 1
