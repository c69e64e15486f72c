"""Export an adapter for ONNX Runtime GenAI: merged into its base, then converted by onnxruntime-genai's own model
builder (`python -m onnxruntime_genai.models.builder`), never by graph code of ours.

    export_onnx(adapter_dir, out_dir, precision, device)   the folder `onnxruntime_genai.Model(out_dir)` loads:
                                                           model.onnx (+ .data), genai_config.json, the tokenizer,
                                                           and a README.md with a short chat loop

Why merged, not a separate adapter file: the builder's own LoRA option (`adapter_path`) bakes the adapter into the
graph as extra MatMuls, no more switchable than a merge, with two more products in every adapted layer; the
runtime's switchable adapters (`onnxruntime_genai.Adapters`, `.onnx_adapter` files) come from Microsoft Olive, not
from the builder. A merge gives
the runtime the plain Phi-3 graph it is tuned for, and int4 quantizes the adapted weights themselves.

The packages (onnxruntime-genai, onnx, onnx-ir) are optional: requirements-export.txt. Without them an export is
refused before anything starts, with the install command. This module imports neither them nor torch at import time.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..runs import registry
from ..tasks.records import read_record, write_record
from . import onnx_verify
from .merge import ExportError, merge_and_save

# The builder's valid pairs ("FP32 CPU, FP32 CUDA, FP16 CUDA, INT4 CPU, INT4 CUDA", printed by the builder itself)
PRECISIONS = ("int4", "fp16", "fp32")
DEVICES = ("cpu", "cuda")
VALID = {("int4", "cpu"), ("fp32", "cpu"), ("int4", "cuda"), ("fp16", "cuda"), ("fp32", "cuda")}
# module -> the package that installs it
PACKAGES = {"onnxruntime_genai": "onnxruntime-genai", "onnx": "onnx", "onnx_ir": "onnx-ir"}
INSTALL = "pip install -r requirements-export.txt (or: pip install onnxruntime-genai==0.18.0 onnx onnx-ir)"
ONNX_FOLDER = "onnx"  # inside a background export's folder, where a merged export has "model"


class OnnxExportError(UserError, ValueError):
    """An ONNX export cannot be done: its packages are missing, or the precision does not run on the device."""


def missing_packages() -> list[str]:
    return [package for module, package in PACKAGES.items() if importlib.util.find_spec(module) is None]


def check_request(precision: str, device: str) -> None:
    """Refuse, before any work, what the builder would refuse or could not run: raises OnnxExportError."""
    if missing := missing_packages():
        raise OnnxExportError(f"the ONNX export needs {', '.join(missing)}, which is not installed: {INSTALL}")
    if precision not in PRECISIONS:
        raise OnnxExportError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if device not in DEVICES:
        raise OnnxExportError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if (precision, device) not in VALID:
        raise OnnxExportError(f"--precision {precision} does not run on --device {device} in ONNX Runtime: "
                              "choose int4 or fp32 for the CPU, int4 or fp16 for CUDA")


def export_onnx(adapter_dir: str | Path, out_dir: str | Path, precision: str = "int4", device: str = "cpu",
                log: Callable[[str], Any] = print) -> Path:
    """Merge the adapter into its base (deploy/export.py, into a temporary folder), convert that with the builder
    into `out_dir`, and write the README. Returns `out_dir`; a half-written one is removed on failure."""
    check_request(precision, device)
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} already exists and is not empty: choose a new output folder")
    with tempfile.TemporaryDirectory(prefix="phi3lora-onnx-") as work:
        merged = Path(work) / "merged"
        # fp16 for a fp16 graph halves the temporary copy; otherwise the builder quantizes from full precision
        merge_and_save(adapter_dir, merged, log=log, dtype="float16" if precision == "fp16" else "float32")
        log(f"converting with onnxruntime-genai's model builder: {precision} for {device}")
        try:
            run_builder(merged, out_dir, precision, device, Path(work) / "cache", log)
            (out_dir / "README.md").write_text(readme(adapter_dir, out_dir, precision, device), encoding="utf-8")
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
    log(f"done: {out_dir} loads with onnxruntime_genai.Model (README.md there has a chat loop)")
    return out_dir


def run_builder(model_dir: Path, out_dir: Path, precision: str, device: str, cache_dir: Path,
                log: Callable[[str], Any]) -> None:
    """The builder's own two steps, as its command line (`python -m onnxruntime_genai.models.builder -i -o -p -e -c`)
    runs them, in this process: torch and transformers are loaded already, where a process of its own would spend
    most of its time importing them again. What it prints goes to `log`, line by line."""
    # its package puts its own folder on sys.path (appended: it shadows nothing) for its top-level imports
    from onnxruntime_genai.models import builder

    started = time.monotonic()
    arguments = (None, str(model_dir), str(out_dir), precision, device, str(cache_dir))
    with contextlib.redirect_stdout(_Lines(log)):
        options = builder.parse_extra_options(*arguments, None)
        builder.create_model(*arguments, **options)
    if not (out_dir / "genai_config.json").is_file():
        raise RuntimeError(f"onnxruntime-genai's model builder wrote no genai_config.json into {out_dir}")
    log(f"the builder took {time.monotonic() - started:.1f} s")


class _Lines(io.TextIOBase):
    """A stdout that hands each whole line to `log`."""

    def __init__(self, log: Callable[[str], Any]):
        self.log, self.pending, self.stdout = log, "", sys.stdout

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            with contextlib.redirect_stdout(self.stdout):  # a `log` that prints prints where it did before
                self.log(line.rstrip())
        return len(text)


def readme(adapter_dir: Path, out_dir: Path, precision: str, device: str) -> str:
    run = read_record(adapter_dir / "run.json") or {}
    trained = f"phi3lora run {run['id']} ({adapter_dir})" if run.get("id") else str(adapter_dir)
    provider = "" if device == "cpu" else \
        "\nInstall `onnxruntime-genai-cuda` instead of `onnxruntime-genai` to run it.\n"
    return f"""# ONNX Runtime GenAI model: a Phi-3 with a LoRA adapter merged in

Built by onnxruntime-genai's model builder from the base model with the adapter merged into its weights.

- adapter: {trained}
- precision: {precision}, for the {device.upper()} execution provider
- exported: {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())} by phi3lora
{provider}
A chat loop (`pip install onnxruntime-genai`; greedy, as `genai_config.json` says; each answer ends at `<|end|>`):

```python
import onnxruntime_genai as og
model = og.Model("{Path(out_dir).resolve().as_posix()}")
tokenizer, history = og.Tokenizer(model), ""
while question := input("you: "):
    history += f"<|user|>\\n{{question}}<|end|>\\n<|assistant|>\\n"
    generator = og.Generator(model, og.GeneratorParams(model))
    generator.append_tokens(tokenizer.encode(history))
    stream, answer = tokenizer.create_stream(), ""
    while not generator.is_done():
        generator.generate_next_token()
        answer += (piece := stream.decode(generator.get_next_tokens()[0]))
        print(piece, end="", flush=True)
    print()
    history += answer + "<|end|>\\n"
```

The base model's license applies to this model.
"""


def run_task(folder: Path, request: dict[str, Any]) -> None:
    """The body of an ONNX export task (a kind "export" task whose request says format "onnx"): export, then check
    the export against torch (onnx_verify.py) into verify.json."""
    out_dir = folder / ONNX_FOLDER
    adapter_dir = registry.run_dir(request["run"])
    export_onnx(adapter_dir, out_dir, request.get("precision") or "int4", request.get("device") or "cpu")
    if request.get("verify", True):
        result = onnx_verify.verify(out_dir, adapter_dir)
        write_record(folder / "verify.json", result)
        print(onnx_verify.summary(result), flush=True)
