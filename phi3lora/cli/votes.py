"""`python -m phi3lora votes export RUN --output prefs.jsonl`: a run's decided blind A/B votes as preference pairs
(inference/vote_pairs.py), ready for `train --method dpo --data prefs.jsonl --from-adapter RUN`."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def add_votes_command(subparsers) -> None:
    parser = subparsers.add_parser("votes", help="a run's blind A/B votes from the Compare tab")
    actions = parser.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="write the run's decided votes as preference pairs (trl's "
                                "prompt/chosen/rejected JSONL) for train --method dpo")
    export.add_argument("run_id")
    export.add_argument("--output", required=True, metavar="FILE", help="the .jsonl file to write")
    export.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    export.set_defaults(run=_export_command)


def _export_command(args) -> int:
    from ..inference.vote_pairs import export_votes

    target = Path(args.output)
    if target.suffix != ".jsonl":
        raise UserError(f"--output {target}: name a .jsonl file (the pairs are written as JSON lines)")
    if target.is_dir() or not target.parent.is_dir():
        raise UserError(f"--output {target}: name a file in an existing folder")
    found = export_votes(args.run_id, target)
    if args.json:
        print(json.dumps({"run": args.run_id, "pairs": found.pairs, "left_out": found.left_out, "output": str(target)}))
    else:
        print(f"{found.describe()}; written to {target}")
    return 0
