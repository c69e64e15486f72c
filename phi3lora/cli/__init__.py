"""The command line, `python -m phi3lora ...`: validate a dataset, train (in the foreground or as a background
run), compare, evaluate, export, deploy a Space. A thin layer over the same functions the app calls: commands.py
parses, dispatches and holds the data, training and run commands; evaluate.py, export.py and space.py hold
theirs. It may import any layer but the UI.
"""
from .commands import main

__all__ = ["main"]
