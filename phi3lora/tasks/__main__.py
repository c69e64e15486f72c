"""The one hidden entry point of background tasks: `python -m phi3lora.tasks FOLDER` is a task's supervisor,
`python -m phi3lora.tasks FOLDER --body` its work (machine.py)."""
import sys
from pathlib import Path

from .machine import run_body, supervise

if __name__ == "__main__":
    folder = Path(sys.argv[1])
    sys.exit(run_body(folder) if sys.argv[2:] == ["--body"] else supervise(folder))
