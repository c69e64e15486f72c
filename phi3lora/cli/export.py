"""`python -m phi3lora export`: merge an adapter into its base now (--adapter), or a run's as a background task
(--run), and follow it."""
from __future__ import annotations

import json

from ..deploy.export import ExportError, export_status, merge_and_save, start_export, wait_for_export
from ..tasks.machine import COMPLETED
from .switches import add_switches


def add_export_command(subparsers) -> None:
    """Register `export` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "export", help="merge an adapter into its base model and save a standalone model (loads without peft)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="adapter folder (a run's --output): merge it now, into --output")
    source.add_argument("--run", dest="run_id", metavar="RUN_ID", help="run id: merge its adapter in the background into <run>/exports/<n>/model "
                                      "(prints n; follow it with --status)")
    parser.add_argument("--output", help="with --adapter: a new or empty folder for the merged model")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"],
                        help="precision of the merged model (default: the run's; fp32 on a CPU)")
    add_switches(parser, status="with --run: list the run's exports and their state",
                 wait="with --run: wait for the export to finish")
    parser.set_defaults(run=_export_command)


def _export_command(args) -> int:
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
