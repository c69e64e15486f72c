"""`python -m phi3lora ...`: validate a dataset, train an adapter, compare base and adapted answers.

A thin layer: each command parses its flags and calls the same functions the app uses. Errors a user can
cause print one plain message and exit 1, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from .errors import UserError

    try:
        return args.run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m phi3lora", description="Fine-tune Phi-3 with LoRA or QLoRA.")
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check a dataset file and show its format, counts and problems")
    validate.add_argument("path")
    validate.add_argument("--format", default="auto", help="auto, messages, sharegpt, alpaca or prompt_completion")
    validate.add_argument("--model", help="tokenizer for token statistics: hub id, folder or 'demo' (default: as for train)")
    validate.add_argument("--max-length", type=int, default=None, help="flag conversations longer than this many tokens")
    validate.add_argument("--json", action="store_true", help="print one JSON object")
    validate.set_defaults(run=_validate)

    train = commands.add_parser("train", help="fine-tune in the foreground and write the adapter to --output")
    train.add_argument("--data", help="dataset file (.jsonl, .json, .csv, .parquet)")
    train.add_argument("--output", required=True, help="run folder: adapter, checkpoints, config.yaml, metrics.jsonl")
    train.add_argument("--method", choices=["lora", "qlora"], help="qlora loads the base in 4-bit NF4")
    train.add_argument("--model", help="base model: hub id, local folder or 'demo'")
    train.add_argument("--config", help="YAML job file (e.g. config.yaml of an earlier run)")
    train.add_argument("--format", help="dataset format (default: detect)")
    train.add_argument("--drop-invalid", action="store_true", help="skip invalid records instead of refusing the dataset")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="any setting, e.g. --set learning_rate=2e-4 --set peft_config.r=8 (see config.yaml)")
    train.set_defaults(run=_train)

    compare = commands.add_parser("compare", help="greedy answers of the base and the adapted model to one prompt")
    compare.add_argument("--adapter", required=True, help="adapter folder (a run's --output)")
    compare.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    compare.add_argument("--prompt", required=True)
    compare.add_argument("--system", help="optional system prompt")
    compare.add_argument("--max-new-tokens", type=int, default=128)
    compare.add_argument("--json", action="store_true", help='print {"base": ..., "adapted": ...}')
    compare.set_defaults(run=_compare)
    return parser


def _validate(args) -> int:
    from . import data
    from .modeling import choose_base_model, load_tokenizer

    dataset = data.read_dataset(args.path, args.format)
    tokenizer = None
    if dataset.conversations:
        tokenizer = load_tokenizer(choose_base_model(args.model).name_or_path)
    max_length = args.max_length or 2048
    report = data.report(dataset, tokenizer, max_length)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        _print_report(report)
    return 0 if dataset.ok else 1


def _print_report(report: dict) -> None:
    print(f"file:          {report['path']}")
    print(f"format:        {report['format'] or 'unknown'}")
    print(f"records:       {report['records']}")
    print(f"conversations: {report['conversations']} usable")
    tokens = report.get("tokens")
    if tokens and tokens.get("count"):
        print(f"tokens:        min {tokens['min']}, median {tokens['median']}, mean {tokens['mean']:.0f}, "
              f"p95 {tokens['p95']}, max {tokens['max']}")
        over = tokens["over_max_length"]
        if over:
            print(f"               {len(over)} over max length {tokens['max_length']}: records "
                  + ", ".join(map(str, over[:20])) + (" ..." if len(over) > 20 else ""))
    for warning in report.get("warnings", []):
        print(f"warning: {warning}")
    errors = report["errors"]
    if errors:
        print(f"{len(errors)} problem(s):")
        for error in errors:
            where = f"record {error['record']}" if error["record"] is not None else "file"
            print(f"  {where}: {error['message']}")
    print("usable" if report["ok"] else "NOT usable: fix the problems above, or train with --drop-invalid to skip them")


def _train(args) -> int:
    from .config import JobConfig
    from .training import train

    config = JobConfig.from_yaml(args.config) if args.config else JobConfig()
    flags = []
    if args.data:
        flags.append(f"data.path={json.dumps(args.data)}")
    if args.method:
        flags.append(f"model.load_in_4bit={'true' if args.method == 'qlora' else 'false'}")
    if args.model:
        flags.append(f"model.base_model={json.dumps(args.model)}")
    if args.format:
        flags.append(f"data.format={args.format}")
    if args.drop_invalid:
        flags.append("data.drop_invalid=true")
    config = config.with_overrides(flags + args.overrides)
    if not config.data.path:
        print("error: no dataset: pass --data PATH (or data.path in --config)", file=sys.stderr)
        return 1
    result = train(config, args.output)
    print(f"done in {result.seconds:.0f}s: {result.global_step} steps, train loss {_fmt(result.train_loss)}, "
          f"eval loss {_fmt(result.eval_loss)}; adapter in {result.output_dir}")
    return 0


def _compare(args) -> int:
    from .compare import compare

    answers = compare(args.adapter, args.prompt, base_model=args.model, max_new_tokens=args.max_new_tokens,
                      system=args.system)
    if args.json:
        print(json.dumps(answers, ensure_ascii=False))
    else:
        print(f"base:    {answers['base']}\nadapted: {answers['adapted']}")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
