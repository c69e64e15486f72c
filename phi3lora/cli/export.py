"""`python -m phi3lora export`: merge an adapter into its base now (--adapter), or a run's as a background task
(--run), and follow it; `--format onnx` converts the merge for ONNX Runtime GenAI and `--verify` checks it
against torch."""
from __future__ import annotations

import json

from ..deploy import onnx_verify
from ..deploy.export import FORMATS, ExportError, export_status, merge_and_save, start_export, wait_for_export
from ..deploy.onnx_export import DEVICES, PRECISIONS, export_onnx
from ..tasks.machine import COMPLETED
from .switches import add_switches


def add_export_command(subparsers) -> None:
    """Register `export` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "export", help="merge an adapter into its base model and save a standalone model (loads without peft), "
                       "or one for ONNX Runtime GenAI (--format onnx)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="adapter folder (a run's --output): merge it now, into --output")
    source.add_argument("--run", dest="run_id", metavar="RUN_ID", help="run id: merge its adapter in the background into <run>/exports/<n>/model "
                                      "(prints n; follow it with --status)")
    parser.add_argument("--output", help="with --adapter: a new or empty folder for the merged model")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"],
                        help="precision of the merged model (default: the run's; fp32 on a CPU)")
    # ONNX Runtime GenAI (deploy/onnx_export.py; needs requirements-export.txt)
    parser.add_argument("--format", choices=FORMATS, default="merged",
                        help="merged: a transformers model (default); onnx: for ONNX Runtime GenAI")
    parser.add_argument("--precision", choices=PRECISIONS, default="int4",
                        help="with --format onnx: int4 (default) or fp32 for the CPU, int4 or fp16 for CUDA")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="with --format onnx: where it will run")
    parser.add_argument("--verify", action="store_true", help="with --format onnx: the same greedy prompts through "
                        "the export and torch; says whether they agree and the tokens/s (a --run export always does)")
    add_switches(parser, status="with --run: list the run's exports and their state",
                 wait="with --run: wait for the export to finish")
    parser.set_defaults(run=_export_command)


def _export_command(args) -> int:
    if args.verify and args.format != "onnx":
        raise ExportError("--verify checks an ONNX export: add --format onnx")
    if args.adapter and args.format == "onnx":
        return _onnx_now(args)
    if args.adapter:
        if not args.output:
            raise ExportError("--adapter needs --output: the folder to write the merged model to")
        out = merge_and_save(args.adapter, args.output, dtype=args.dtype)
        print(json.dumps({"path": str(out)}) if args.json else f"merged model in {out}")
        return 0
    if args.status:
        infos = export_status(args.run_id)
        if args.json:
            print(json.dumps(infos))
        for info in infos if not args.json else []:
            print(f"export {info['export']}: {info['status']}" + (f" ({info['reason']})" if info["reason"] else "")
                  + (f" -> {info['path']}" if info["path"] else "") + _checked(info))
        return 0
    number = start_export(args.run_id, dtype=args.dtype, format=args.format, precision=args.precision,
                          device=args.device)
    if not args.wait:
        print(json.dumps({"run": args.run_id, "export": number}) if args.json else f"export {number} of {args.run_id} started")
        return 0
    info = wait_for_export(args.run_id, number)
    print(json.dumps(info) if args.json else f"export {number}: {info['status']}"
          + (f" ({info['reason']})" if info["reason"] else "") + (f" -> {info['path']}" if info["path"] else "")
          + _checked(info))
    return 0 if info["status"] == COMPLETED else 1


def _checked(info: dict) -> str:
    return f"\n  {onnx_verify.summary(info['verify'])}" if info.get("verify") else ""


def _onnx_now(args) -> int:
    if not args.output:
        raise ExportError("--adapter needs --output: the folder to write the ONNX model to")
    out = export_onnx(args.adapter, args.output, args.precision, args.device, log=print if not args.json else _quiet)
    result = onnx_verify.verify(out, args.adapter) if args.verify else None
    if args.json:
        print(json.dumps({"path": str(out), **({"verify": result} if result else {})}))
    else:
        print(f"ONNX Runtime GenAI model in {out}" + (f"\n{onnx_verify.summary(result)}" if result else ""))
    # a check that found the export answering otherwise than torch fails the command (int4 may part: it says where)
    return 1 if result and not result.get("agree", True) and args.precision != "int4" else 0


def _quiet(_line: str) -> None:
    pass
