"""`python -m phi3lora samples`: the datasets that ship with phi3lora (data/samples.py), listed, and the identity
sample written out with a name and a maker of the user's choice, ready for `train --data`."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..data.samples import DEFAULT_AUTHOR, DEFAULT_NAME, IDENTITY, fill_identity, shipped_samples
from ..errors import UserError


def add_samples_command(subparsers) -> None:
    """Register `samples` (list them) and `samples identity` (write the filled identity set) on the CLI."""
    parser = subparsers.add_parser("samples", help="list the datasets that ship with phi3lora, or write the identity "
                                   "sample with your assistant's name and maker")
    parser.set_defaults(run=_list_command)
    actions = parser.add_subparsers(dest="action")
    identity = actions.add_parser("identity", help="write the identity sample with a name and a maker filled in")
    identity.add_argument("--name", default="", help=f"the assistant's name (default {DEFAULT_NAME!r})")
    identity.add_argument("--author", "--maker", dest="author", default="",
                          help=f"who made it (default {DEFAULT_AUTHOR!r})")
    identity.add_argument("--output", required=True, metavar="FILE", help="the .jsonl file to write")
    identity.set_defaults(run=_identity_command)


def _list_command(args) -> int:
    samples = shipped_samples()
    width = max((len(name) for name in samples), default=0)
    for name, sample in samples.items():
        print(f"{name:<{width}}  {_count(sample.path):>3} conversations  {sample.what}")
    print(f"in {IDENTITY.path.parent}; write the identity one with your own names: python -m phi3lora samples "
          "identity --name NAME --author MAKER --output FILE")
    return 0


def _identity_command(args) -> int:
    target = Path(args.output)
    if target.suffix != ".jsonl":
        raise UserError(f"--output {target}: name a .jsonl file (the sample is written as JSON lines)")
    if target.is_dir():
        raise UserError(f"--output {target} is a folder: name the .jsonl file to write")
    if IDENTITY.file not in shipped_samples():
        raise UserError(f"the identity sample is missing from this install ({IDENTITY.path})")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # filled in a folder of its own, then moved: fill_identity names its file, which may be one of the user's
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".phi3lora-identity-") as folder:
            fill_identity(Path(folder), args.name, args.author).replace(target)  # checks the name and the maker
    except OSError as error:
        raise UserError(f"--output {target}: cannot write it ({error.strerror or error})") from None
    print(f"wrote {_count(target)} conversations to {target}; train on it with: python -m phi3lora train --data "
          f"{target} --output DIR")
    return 0


def _count(path: Path) -> int:
    """Conversations in a JSON-lines sample: its non-empty lines."""
    with path.open(encoding="utf-8") as lines:
        return sum(1 for line in lines if line.strip())
