"""`python -m phi3lora evaluate RUN_ID`: held-out evaluation of a run, inline, in the background, or its status."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..inference.evaluation import (DEFAULT_MAX_NEW_TOKENS, DEFAULT_SAMPLES, evaluate_run, evaluation_dir,
                                    evaluation_status, start_evaluation)
from ..inference.forgetting import forgetting_sentence, gain_sentence
from .switches import add_switches


def add_evaluate_command(subparsers) -> None:
    """Register `evaluate` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "evaluate", help="eval loss and perplexity of base vs adapted on a run's eval split, and sample answers")
    parser.add_argument("run_id", metavar="RUN_ID")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="eval conversations to answer (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="per sample answer")
    parser.add_argument("--no-general-chat", dest="general_chat", action="store_false",
                        help="leave out the forgetting check (base and adapted on the shipped everyday-chat set): "
                             "on a CPU a full-size model takes minutes over it")
    add_switches(parser, background="evaluate in a background task; follow it with --status",
                 status="show the state of the run's evaluation")
    parser.set_defaults(run=_evaluate_command)


def _evaluate_command(args) -> int:
    if args.status:
        status = evaluation_status(args.run_id)
        print(json.dumps(status) if args.json else status["status"] + (f": {status['message']}" if status["message"] else ""))
        return 0
    if args.background:
        start_evaluation(args.run_id, args.samples, args.max_new_tokens, args.general_chat)
        print(json.dumps({"run": args.run_id, "status": evaluation_status(args.run_id)["status"]}) if args.json
              else f"evaluating {args.run_id} in the background; follow it with --status")
        return 0
    summary = evaluate_run(args.run_id, args.samples, args.max_new_tokens,
                           log=lambda line: print(line, file=sys.stderr, flush=True), general_chat=args.general_chat)
    folder = evaluation_dir(args.run_id)
    if args.json:
        print(json.dumps({**summary, "summary_path": str(folder / "summary.json"),
                          "samples_path": str(folder / "samples.csv")}))
    else:
        _print_summary(summary, folder)
    return 0


def _print_summary(summary: dict[str, Any], folder: Path) -> None:
    print(f"run {summary['run_id']}: eval split of {summary['eval_conversations']} conversations, "
          f"{summary['eval_tokens']} scored tokens ({summary['seconds']:.0f}s)")
    print(f"{'':<9}{'loss':>10}{'perplexity':>14}")
    for name in ("base", "adapted"):
        print(f"{name:<9}{summary[f'{name}_loss']:>10.4f}{summary[f'{name}_perplexity']:>14.3f}")
    for sentence in (gain_sentence(summary), forgetting_sentence(summary)):
        if sentence:
            print(sentence)
    print(f"samples: {folder / 'samples.csv'} ({summary['samples']} rows)")
    print(f"summary: {folder / 'summary.json'}")
