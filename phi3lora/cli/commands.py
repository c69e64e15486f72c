"""`python -m phi3lora ...`: validate a dataset, train an adapter (in the foreground or as a background run),
compare base and adapted answers, export a merged model.

A thin layer: each command parses its flags and calls the same functions the app uses. Errors a user can
cause print one plain message and exit 1, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import settings
from ..config import DEFAULT_MAX_LENGTH
from ..errors import UserError
from .evaluate import add_evaluate_command
from .export import add_export_command
from .push import add_push_command
from .samples import add_samples_command
from .space import add_space_command
from ..policy.limits import DEFAULT_MAX_NEW_TOKENS
from ..runs.lineage import describe as describe_lineage
from .votes import add_votes_command
from ..tasks import launch, machine


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --processes` hands them to its ranks
    try:
        settings.check_all()  # a bad PHI3LORA_* value stops every command at once, named with what it allows
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
    dataset = validate.add_mutually_exclusive_group(required=True)
    dataset.add_argument("path", nargs="?", help="dataset file, or hub:owner/name[:split] for a Hugging Face dataset")
    dataset.add_argument("--data", help="the same as PATH")
    validate.add_argument("--format", default="auto", help="auto, messages, sharegpt, alpaca, prompt_completion or phi3_text")
    _add_columns_option(validate)
    validate.add_argument("--model", help="tokenizer for token statistics: hub id, folder or 'demo' (default: as for train)")
    validate.add_argument("--max-length", type=int, default=None,
                          help="training's max_length to measure against (default: what train would use here "
                          f"for the base model: 512 for the demo model, else {DEFAULT_MAX_LENGTH})")
    validate.add_argument("--json", action="store_true", help="print one JSON object")
    validate.set_defaults(run=_validate)

    train = commands.add_parser("train", help="fine-tune in the foreground and write the adapter to --output")
    train.add_argument("--output", required=True, help="run folder: adapter, checkpoints, config.yaml, metrics.jsonl")
    _add_job_options(train)
    train.add_argument("--resume", action="store_true", help="continue from the newest whole checkpoint in --output")
    train.add_argument("--dry-run", action="store_true", help="print the job as it would run and its memory "
                       "estimate against the free memory; start nothing")
    train.add_argument("--json", action="store_true", help="with --dry-run: print one JSON object")
    _add_launch_options(train)
    train.set_defaults(run=_train)

    compare = commands.add_parser("compare", help="greedy answers of the base and the adapted model to one prompt (one mixed batch)")
    compare.add_argument("--adapter", required=True, help="adapter folder (a run's --output)")
    compare.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    compare.add_argument("--prompt", required=True)
    compare.add_argument("--system", help="optional system prompt")
    compare.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    compare.add_argument("--json", action="store_true", help='print {"base": ..., "adapted": ...}')
    compare.set_defaults(run=_compare)

    runs = commands.add_parser("runs", help="background training runs: start, list, show, cancel, resume, wait, delete")
    actions = runs.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="queue a training run in the background; prints its id")
    _add_job_options(start)
    _add_launch_options(start)
    for name, helptext in [("list", "all runs, newest first"), ("show", "status, progress and latest metrics of a run"),
                           ("cancel", "stop a run at its next step, keeping the adapter as it stands"),
                           ("resume", "continue a failed, cancelled or interrupted run from its newest whole checkpoint"),
                           ("wait", "wait until a run has finished; exit 0 when it completed"),
                           ("delete", "delete a finished run and its files")]:
        action = actions.add_parser(name, help=helptext)
        if name != "list":
            action.add_argument("run_id")
        if name == "wait":
            action.add_argument("--timeout", type=float, help="give up after this many seconds")
        actions.choices[name].set_defaults(run=_runs)
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="machine-readable output")
    start.set_defaults(run=_runs)
    add_export_command(commands)
    add_space_command(commands)
    add_evaluate_command(commands)
    add_samples_command(commands)
    add_push_command(commands)
    add_votes_command(commands)
    return parser


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset file (.jsonl, .json, .csv, .parquet), or hub:owner/name[:split]")
    parser.add_argument("--method", choices=["lora", "qlora", "dpo"],
                        help="qlora loads the base in 4-bit NF4; dpo trains --from-adapter on preference pairs (--data)")
    parser.add_argument("--from-adapter", metavar="RUN_OR_DIR",
                        help="with --method dpo: the finished SFT run (its id) or adapter folder to continue")
    parser.add_argument("--model", help="base model: hub id, local folder or 'demo'")
    parser.add_argument("--config", help="YAML job file (e.g. config.yaml of an earlier run)")
    parser.add_argument("--format", help="dataset format (default: detect)")
    _add_columns_option(parser)
    parser.add_argument("--drop-invalid", action="store_true", help="skip invalid records instead of refusing the dataset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any setting, e.g. --set learning_rate=2e-4 --set peft_config.r=8 (see config.yaml)")


def _add_columns_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--columns", metavar="TARGET=COLUMN,...",
                        help="read the file's columns as the format's, e.g. prompt=question,completion=answer "
                        "(kept in config.yaml as data.columns)")


def _add_launch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", type=int, metavar="N",
                        help="training processes (accelerate launch): default one per visible GPU; on a CPU, N ranks "
                        "in DDP over gloo")
    parser.add_argument("--accelerate-config", metavar="FILE",
                        help="accelerate's config file (accelerate config) for a cluster: machines, ranks, strategy")


def _job_config(args):
    """The job from --config, then the flags, then --set (later wins)."""
    from ..job_builder import assignments_layer, build_job, file_layer, values_layer

    flags = {"data.path": args.data, "method": args.method, "model.base_model": args.model,
             "data.format": args.format, "data.drop_invalid": args.drop_invalid, "data.columns": args.columns,
             "model.adapter": args.from_adapter}
    config = build_job(*([file_layer(args.config)] if args.config else []),
                       values_layer({key: value for key, value in flags.items() if value}),  # the flags given
                       assignments_layer(args.overrides))
    if not config.data.path:
        raise UserError("no dataset: pass --data PATH (or data.path in --config)")
    return config


HUB = "hub:"  # --data hub:owner/name[:split] names a Hugging Face hub dataset


@contextlib.contextmanager
def _data_file(given: str | None, keep_in: Path | None = None):
    """--data as a local file. A hub dataset is first copied from the hub into `keep_in` (or a temporary folder,
    removed afterwards) by the Data tab's own guarded path: anonymous, one hub repository, never a local path."""
    if not given or not given.startswith(HUB):
        yield given
        return
    from ..data import hub

    with tempfile.TemporaryDirectory(prefix="phi3lora-hub-") as temporary:
        loaded = hub.fetch(given[len(HUB):], keep_in or temporary)
        if loaded.truncated:
            print(f"note: only the first {loaded.rows} records of {loaded.name} are used: this server copies at most "
                  f"{hub.MAX_ROWS} records and PHI3LORA_MAX_UPLOAD_MB of a hub dataset", file=sys.stderr)
        yield str(loaded.path)


def _validate(args) -> int:
    """Torch-free: the job is resolved as `train` would resolve it on this machine (base model, its max_length),
    and the tokenizer loads without torch, or transformers where exact (tokenizer_loading.py), so the report comes
    in a second or two."""
    from .. import data
    from ..job_builder import build_job, resolve_job, values_layer
    from ..tokenizer_loading import load_counting_tokenizer, quiet_transformers

    source = args.data or args.path
    with _data_file(source) as path:
        given = {"data.path": path, "data.format": args.format, "model.base_model": args.model,
                 "training_config.max_length": args.max_length, "data.columns": args.columns}
        # the base model and max_length training would use here; --max-length past the model's positions is
        # refused as train would refuse it
        config, _ = resolve_job(build_job(values_layer({key: value for key, value in given.items() if value})))
        dataset = data.read_dataset(config.data.path, config.data.format, columns=config.data.columns)
    max_length, base_model = config.training_config.max_length, _base_path(config.model.base_model)
    with quiet_transformers():  # the report says what is too long; no library warnings
        tokenizer = load_counting_tokenizer(base_model) if dataset.conversations else None
        report = data.report(dataset, tokenizer, max_length)
    report["base_model"] = config.model.base_model
    if source.startswith(HUB):
        report["path"] = source  # its copy is gone
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        _print_report(report, args.max_length is not None)
    return 0 if dataset.ok else 1


def _base_path(base_model: str) -> str:
    from ..base_model import choose_base_model

    return choose_base_model(base_model).name_or_path


LISTED = 20  # validate's text output lists this many problems or records; --json lists them all
CUT_WORDS = {
    "no_answer": "no assistant token left within them: nothing to learn, trl drops the conversation",
    "last_answer_lost": "the last answer starts past the cut and is lost entirely (earlier answers train)",
    "last_answer_cut": "the last answer is cut short",
    "end_cut": "the answers are whole; only the end-of-turn after the last one is cut (it will not learn to stop there)",
}


def _print_report(report: dict, max_length_given: bool = False) -> None:
    print(f"file:          {report['path']}")
    print(f"format:        {report['format'] or 'unknown'}")
    print(f"records:       {report['records']}")
    print(f"conversations: {report['conversations']} usable")
    tokens = report.get("tokens")
    if tokens and tokens.get("count"):
        why = ("as given" if max_length_given
               else f"what train uses for base model {report['base_model']} here; --max-length N to change")
        print(f"tokens:        min {tokens['min']}, median {tokens['median']}, mean {tokens['mean']:.0f}, "
              f"p95 {tokens['p95']}, max {tokens['max']}; max length {tokens['max_length']} ({why})")
        _print_cuts(tokens)
    for warning in report.get("warnings", []):
        print(f"warning: {warning}")
    for note in report.get("notes", []):
        print(note)
    errors = report["errors"]
    if errors:
        print(f"{len(errors)} problem(s):")
        for error in errors[:LISTED]:
            where = f"record {error['record']}" if error["record"] is not None else "file"
            print(f"  {where}: {error['message']}")
        if len(errors) > LISTED:
            print(f"  ... and {len(errors) - LISTED} more; --json lists them all")
    print("usable" if report["ok"] else "NOT usable: fix the problems above, or train with --drop-invalid to skip them")


def _print_cuts(tokens: dict) -> None:
    over = tokens["over_max_length"]
    if not over:
        return
    print(f"over length:   {len(over)} conversation(s) longer than {tokens['max_length']} tokens; training keeps the "
          f"first {tokens['max_length']} tokens of each and cuts the end:")
    for outcome, words in CUT_WORDS.items():
        records = [cut["record"] for cut in tokens["cut"] if cut["outcome"] == outcome]
        if records:
            print(f"  {len(records)}: {words}: records {_records(records)}")
    unknown = [cut["record"] for cut in tokens["cut"] if cut["outcome"] is None]
    if unknown:
        print(f"  {len(unknown)}: answers not found in the template's text, so not checked: records {_records(unknown)}")


def _records(records: list[int]) -> str:
    more = len(records) - LISTED
    return ", ".join(map(str, records[:LISTED])) + (f" ... and {more} more" if more > 0 else "")


def _train(args) -> int:
    with _data_file(args.data, keep_in=Path(args.output) / "dataset") as args.data:  # kept: config.yaml names it
        config = _job_config(args)
    if args.dry_run:
        from .dry_run import dry_run

        return dry_run(config, args.json)
    if not launch.in_a_launched_rank():
        launched = _train_in_processes(args, config.training_config.distributed)
        if launched is not None:
            return launched
    if not config.needs_bitsandbytes:
        machine.leave_out_bitsandbytes()  # before the trainer's imports: see there
    from ..training.trainer import train

    result = train(config, args.output, resume=args.resume)
    if not launch.is_main_rank():
        return 0  # one rank speaks for all
    print(f"done in {result.seconds:.0f}s: {result.global_step} steps, train loss {_fmt(result.train_loss)}, "
          f"eval loss {_fmt(result.eval_loss)}; adapter in {result.output_dir}")
    return 0


def _train_in_processes(args, distributed: str) -> int | None:
    """`train --processes N`: this process checks the launch and starts the ranks under accelerate launch, each
    running this very command (rank 0 writes config.yaml and every other file); None when one process will do
    (the default in the foreground, whatever the GPUs). It loads no torch: the ranks start that much sooner."""
    from ..tasks.processes import child_env

    accelerate_config = args.accelerate_config
    launch.check_launch(args.processes, distributed, launch.visible_gpu_count, accelerate_config)
    if not (args.processes or accelerate_config):
        return None
    launcher = launch.launcher_command(args.processes, distributed, launch.visible_gpu_count(), accelerate_config)
    if not launcher:
        return None
    local_data = ["--data", args.data] if args.data else []  # a hub dataset's copy, fetched once, here
    done = subprocess.run([*launcher, "-m", "phi3lora", *args.argv, *local_data], env=child_env())
    if done.returncode:
        raise UserError(f"training on several processes failed (exit code {done.returncode}): see the ranks' "
                        "messages above")
    return 0


def _runs(args) -> int:
    from ..runs import lifecycle

    if args.action == "start":
        with _data_file(args.data) as args.data:  # start_run snapshots it into the run folder
            run_id = lifecycle.start_run(_job_config(args), processes=args.processes,
                                         accelerate_config=args.accelerate_config)
        print(json.dumps({"id": run_id}) if args.json else run_id)
        return 0
    if args.action == "list":
        infos = lifecycle.list_runs()
        if args.json:
            print(json.dumps([info.to_dict() for info in infos]))
        for info in infos if not args.json else []:
            print(f"{info.id}  {info.status:<11} {info.method:<5} {info.dataset:<28} step {info.step}/{info.max_steps}"
                  f"  loss {_fmt(info.train_loss)}  eval {_fmt(info.eval_loss)}")
        return 0
    if args.action == "cancel":
        was = lifecycle.cancel_run(args.run_id)
        print(json.dumps({"id": args.run_id, "cancel_requested": True, "was": was}) if args.json
              else f"cancel requested ({args.run_id} was {was})")
        return 0
    if args.action == "resume":
        lifecycle.resume_run(args.run_id)
        print(json.dumps({"id": args.run_id, "status": "queued"}) if args.json else f"{args.run_id} queued to resume")
        return 0
    if args.action == "delete":
        lifecycle.delete_run(args.run_id)
        print(json.dumps({"id": args.run_id, "deleted": True}) if args.json else f"deleted {args.run_id}")
        return 0
    if args.action == "wait":
        info = lifecycle.wait_for_run(args.run_id, args.timeout)
    else:
        info = lifecycle.run_info(args.run_id)
    if args.json:
        print(json.dumps(info.to_dict()))
    else:
        _print_run(info, lifecycle.log_tail(args.run_id, 1500))
    return 0 if args.action == "show" or info.status == "completed" else 1


def _print_run(info, log: str) -> None:
    print(f"run:      {info.id}\nstatus:   {info.status}" + (f" ({info.reason})" if info.reason else ""))
    print(f"method:   {info.method} on {info.base_model}, dataset {info.dataset}, attempt {info.attempts}")
    if info.pid:
        print(f"pid:      {info.pid}")
    eta = f", ETA {info.eta_seconds:.0f}s" if info.eta_seconds is not None else ""
    print(f"progress: step {info.step}/{info.max_steps}, epoch {info.epoch:.2f}, {info.elapsed:.0f}s{eta}")
    print(f"loss:     train {_fmt(info.train_loss)}, eval {_fmt(info.eval_loss)}, lr {info.learning_rate}")
    if info.stop_reason:
        print(f"stopped:  {info.stop_reason}")
    if info.lineage:
        print(f"lineage:  {describe_lineage(info.lineage)}")
    if info.adapter:
        print(f"adapter:  {info.adapter}")
    if log:
        print("log tail:\n  " + "\n  ".join(log.strip().splitlines()[-8:]))


def _compare(args) -> int:
    from ..inference.service import compare

    answers = compare(args.adapter, args.prompt, base_model=args.model, max_new_tokens=args.max_new_tokens,
                      system=args.system)
    if args.json:
        print(json.dumps(answers, ensure_ascii=False))
    else:
        print(f"base:    {answers['base']}\nadapted: {answers['adapted']}")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
