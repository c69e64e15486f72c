"""`train --dry-run`: the job as it would run here (base model and its defaults resolved, the data checked) and its
memory estimate against what the device has free; nothing is written, loaded or started. Torch-free on a machine
without a GPU, so it answers in a second or two."""
from __future__ import annotations

import json

from .. import data
from ..config import JobConfig
from ..errors import UserError
from ..job_builder import resolve_job
from ..training import memory_estimate


def dry_run(config: JobConfig, as_json: bool = False) -> int:
    config, note = resolve_job(config)
    examples, what = data.usable_examples(config)  # conversations, or a DPO job's preference pairs
    found = memory_estimate.report(config)
    if as_json:
        print(json.dumps({"job": config.to_dict(), "conversations": examples, "memory": found}))
    else:
        print(f"# {config.method}: {note}; {examples} usable {what}")
        print(config.to_yaml(), end="")
        estimate = found["estimate"]
        if estimate:
            print(f"# memory estimate ({estimate['device']}, {estimate['dtype']}):")
            for name, size in estimate["parts_gb"].items():
                print(f"#   {name:<34}{size:7.2f} GB")
            print(f"#   {'total':<34}{estimate['total_gb']:7.2f} GB")
        if found["available_gb"] is not None:
            print(f"#   {'free (' + found['available_from'] + ')':<34}{found['available_gb']:7.2f} GB")
        print("# dry run: nothing was started")
    if found["fits"] is False:
        raise UserError(found["message"])
    return 0
