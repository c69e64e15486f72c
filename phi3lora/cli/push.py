"""`python -m phi3lora push`: a run's adapter (or an adapter folder), or the merged model, to a Hugging Face Hub
model repository with a model card (deploy/hub_push.py)."""
from __future__ import annotations

import json


def add_push_command(subparsers) -> None:
    """Register `push` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "push", help="upload an adapter (or the merged model) to a Hugging Face Hub model repository, with a model card")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", dest="run_id", metavar="RUN_ID", help="a finished run of this server")
    source.add_argument("--adapter", metavar="DIR", help="an adapter folder (train's --output)")
    parser.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the model repository (created if missing)")
    parser.add_argument("--public", action="store_true",
                        help="make the repository public (default: private, an existing one included)")
    parser.add_argument("--merged", action="store_true",
                        help="push the merged model instead of the adapter (a run's newest merged export, else a new one)")
    parser.add_argument("--token-env", metavar="VAR",
                        help="read the token from $VAR (default: $HF_TOKEN or the saved `hf auth login`)")
    parser.add_argument("--json", action="store_true", help='print {"url": ...} at the end')
    parser.set_defaults(run=_push_command)


def _push_command(args) -> int:
    from ..deploy.hub_push import HubPushOptions, push_adapter, push_run

    options = HubPushOptions(repo=args.repo, public=args.public, merged=args.merged, token_env=args.token_env)
    log = (lambda line: None) if args.json else print
    url = push_run(args.run_id, options, log) if args.run_id else push_adapter(args.adapter, options, log)
    if args.json:
        print(json.dumps({"url": url}))
    return 0
