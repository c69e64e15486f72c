"""TrainerCallbacks through which a training process reports to the outside world and hears from it.

Everything goes through files in the run folder, so a web page, a CLI or a restarted app can follow a run
without talking to its process.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, TrainerCallback


class MetricsFile(TrainerCallback):
    """Appends one JSON line per event to metrics.jsonl: a "start", throttled "progress" events, and every log
    (train loss, eval loss, learning rate). Readers follow the file by offset (runs.MetricsReader)."""

    def __init__(self, path: Path, progress_every: float = 1.0):
        self.path = path
        self.progress_every = progress_every  # seconds between progress events: a line per step is too many
        self.started = self.last_progress = time.time()
        self.first_count: tuple[float, float] | None = None  # (tokens, time) at this process's first log
        self.last_count: tuple[float, float] | None = None

    def _write(self, state, event: dict) -> None:
        record = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
                  "elapsed": round(time.time() - self.started, 3), **event}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _speed(self) -> dict:
        speed = {}
        if self.first_count and self.last_count and self.last_count[1] > self.first_count[1]:
            tokens = self.last_count[0] - self.first_count[0]
            speed["tokens_per_second"] = round(tokens / (self.last_count[1] - self.first_count[1]), 1)
        if torch.cuda.is_available():
            speed["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return speed

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_progress = time.time()
        if state.is_world_process_zero:
            self._write(state, {"event": "start"})

    def on_step_end(self, args, state, control, **kwargs):
        now = time.time()
        if state.is_world_process_zero and (now - self.last_progress >= self.progress_every or state.global_step >= state.max_steps):
            self.last_progress = now
            self._write(state, {"event": "progress", **self._speed()})

    def record(self, state, event: dict) -> None:
        """One event of the trainer's own after training ("best": which step's adapter was kept, and why)."""
        if state.is_world_process_zero:
            self._write(state, event)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        if "num_tokens" in logs and "loss" in logs:  # trl counts the non-padding tokens trained on so far
            self.last_count = (logs["num_tokens"], time.time())
            self.first_count = self.first_count or self.last_count
        if state.is_world_process_zero:
            self._write(state, {**logs, **self._speed()})


class StopWhenAsked(TrainerCallback):
    """Stops training at the next step once `request_file` exists (a cancel from the UI or CLI).
    Training then ends normally, so the caller still saves the adapter as it stands.

    Under accelerate only the main process reads the file, and every step its answer is shared with all ranks (one
    all-reduce of one number): all stop at the same step. Ranks that each looked for themselves could see the file
    a step apart, and the one that stopped would leave the others waiting in a collective until killed."""

    def __init__(self, request_file: Path, check_every: float = 0.5):
        self.request_file = request_file
        self.check_every = check_every
        self.last_check = 0.0
        self.asked = False

    def on_step_end(self, args, state, control, **kwargs):
        now = time.time()
        if state.is_world_process_zero and not self.asked and now - self.last_check >= self.check_every:
            self.last_check = now
            self.asked = self.request_file.exists()
        if _several_ranks():
            decision = torch.tensor([1.0 if self.asked else 0.0], device=args.device)
            torch.distributed.all_reduce(decision, op=torch.distributed.ReduceOp.MAX)
            self.asked = bool(decision.item())
        if self.asked:
            control.should_training_stop = True
            control.should_save = False  # the adapter is saved once, after training returns


def _several_ranks() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


class StopWhenEvalLossStalls(EarlyStoppingCallback):
    """transformers' early stopping on eval_loss (its Trainer, with load_best_model_at_end, then loads the best
    checkpoint's adapter), and the sentence that says which step was kept and why training ended there.

    Its patience counter is saved in each checkpoint and restored on resume (restore_callback_states_from_checkpoint:
    the Trainer then replaces this object with a new one of the same arguments, so read it back from the trainer)."""

    def kept(self, state) -> dict | None:
        """The "best" event: the step whose adapter was kept, its eval loss, and why training stopped; None before
        any evaluation had its checkpoint (a run cancelled early keeps its last weights)."""
        best_step, best_loss = state.best_global_step, state.best_metric
        if not best_step or best_loss is None:
            return None
        stalled = self.early_stopping_patience_counter >= self.early_stopping_patience
        evaluations = sum(1 for entry in state.log_history if "eval_loss" in entry)
        kept = f"kept step {best_step} (eval loss {best_loss:.4f}), the best of {evaluations} evaluations"
        if stalled:
            by = f" by more than {self.early_stopping_threshold:g}" if self.early_stopping_threshold else ""
            reason = (f"stopped early at step {state.global_step} of {state.max_steps}: the eval loss did not improve"
                      f"{by} for {self.early_stopping_patience} evaluations in a row; {kept}")
        else:
            reason = f"trained to step {state.global_step} of {state.max_steps}; {kept}"
        return {"event": "best", "best_step": best_step, "best_eval_loss": best_loss, "stopped_early": stalled,
                "stop_reason": reason}
