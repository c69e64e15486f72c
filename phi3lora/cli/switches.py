"""Options several commands share."""
from __future__ import annotations

import argparse


def add_switches(parser: argparse.ArgumentParser, **helps: str) -> None:
    """On/off flags named by keyword (`status="show ..."` gives --status), then --json, which every command has."""
    for name, text in {**helps, "json": "machine-readable output"}.items():
        parser.add_argument(f"--{name.replace('_', '-')}", action="store_true", help=text)
