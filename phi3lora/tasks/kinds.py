"""The kinds of background task: what each runs, what its log is called, and what a user does after a failure.

A kind names its body as "module:function", imported only in the task's own process, so that starting or watching
a task never imports torch. A body is called as body(folder, request) and returns None when it completed, or
(status, reason) for another ending it saw itself (cancelled at a step); it raises to fail.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Kind:
    name: str
    body: str            # "module:function"
    log_name: str        # the body's stdout and stderr, in the task folder
    retry: str           # what to do once a failure's cause is fixed, as the end of a sentence
    gpu_queue: bool      # waits for a free slot on its GPU set ($PHI3LORA_MAX_RUNS at once) before it starts
    multi_gpu: bool      # started under `accelerate launch` on several processes (launch.py): GPUs, or a CPU's ranks

    def load_body(self) -> Callable:
        module, function = self.body.split(":")
        return getattr(importlib.import_module(module), function)


KINDS = {kind.name: kind for kind in (
    Kind("train", "phi3lora.training.task:run", "train.log", "resume the run: it continues from its last whole "
         "checkpoint", gpu_queue=True, multi_gpu=True),
    Kind("evaluate", "phi3lora.inference.evaluation:run_task", "evaluate.log", "evaluate again", gpu_queue=False,
         multi_gpu=False),
    Kind("export", "phi3lora.deploy.export:run_task", "export.log", "start the export again", gpu_queue=False,
         multi_gpu=False),
)}
