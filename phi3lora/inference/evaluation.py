"""Held-out evaluation of a finished run: how the adapted model does against its base on the run's own eval split,
and what each of them answers.

    evaluate_run(run_id, samples=8, max_new_tokens=128)    inline (`python -m phi3lora evaluate RUN_ID`)
    should_run_in_background(run_id)                       True when the eval split is large (the app then uses:)
    start_evaluation(run_id, samples=8, max_new_tokens=128) in a background process (`evaluate RUN_ID --background`)
    evaluation_status(run_id)                              {status: none or a task status, message, log}
    read_evaluation(run_id)                                {summary, rows} once complete, else None

What it computes, with one copy of the base in memory and the run's adapter attached to it (in the app, the chat
model itself when it holds the run's base; else a copy loaded once tasks/gpu_memory.py has made room for it):
  - the loss of the base (the same model under `disable_adapter()`) and of the adapted model on exactly the split
    training held out (the run's dataset snapshot, split with its eval_size and seed), scored as the trainer scores
    eval_loss: trl's tokenization (with assistant_only_loss, its Phi-3 training template's assistant mask: only
    assistant tokens count), truncated at max_length, and trl's fused LM head. The loss is the mean over every scored
    token of the split, perplexity exp(loss). (The trainer averages per-batch means instead, so its eval_loss can
    differ slightly.)
  - the forgetting check (forgetting.py): the same two losses on a small general-chat set that ships with phi3lora,
    so the gain on the run's own data is shown beside what the adapter cost on everyday conversation.
  - a sample table: for the first N eval conversations, the last user message, the reference answer (the last
    assistant turn) and the greedy answers of base and adapted, both in one mixed-adapter `generate` per batch.

An evaluation is a task (tasks/machine.py), in the background or inline: its folder holds the task's records
(queued.json ... exit.json, evaluate.log in the background) and its results. One at a time; a new one replaces the
last:

    <run>/evaluation/
        samples.csv      prompt, reference, base, adapted (UTF-8 with a BOM so spreadsheets read it right)
        summary.json     the figures, written last

This module imports no torch at import time, so the CLI's parser and the app's status polling stay cheap.
"""
from __future__ import annotations

import csv
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import data
from ..runs import registry
from ..policy.limits import DEFAULT_MAX_NEW_TOKENS
from .. import settings as env_settings  # "settings" names the training settings here
from ..config import JobConfig
from ..errors import UserError
from ..tasks import gpu_memory, machine
from ..tasks.machine import ACTIVE
from ..tasks.records import read_record, write_record
from ..job_builder import load_job
from . import forgetting
from .adapter_info import BASE
from ..base_model import choose_base_model

if TYPE_CHECKING:  # the service imports torch; an evaluation is handed one, never imports it
    from .service import ChatService

NONE = "none"
ADAPTED = "adapted"  # the adapter's name on the model
DEFAULT_SAMPLES = 8
GENERATE_BATCH = 8  # sample conversations per generate call (two rows each: base and adapted)
CSV_COLUMNS = ("prompt", "reference", "base", "adapted")
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection"), also after leading
# white space or a line break. A leading quote counts too, so that escaping can be undone exactly (read_evaluation).
_FORMULA_START = ("=", "+", "-", "@")
_LEADING_SPACE = " \t\r\n"


class EvaluationError(UserError, ValueError):
    """A run cannot be evaluated (no eval split, no adapter, still training, already being evaluated, ...)."""


# --- what is evaluated --------------------------------------------------------------------------------------

def evaluation_dir(run_id: str) -> Path:
    return registry.run_dir(run_id) / "evaluation"  # run_dir validates the id and that the run exists


def eval_split(run_id: str) -> tuple[JobConfig, list[data.Conversation]]:
    """The run's resolved job and the conversations its training held out, rebuilt as training.prepare builds them."""
    config = load_job(registry.run_dir(run_id) / "config.yaml")
    dataset = data.read_dataset(config.data.path, config.data.format, columns=config.data.columns)
    conversations = data.usable_conversations(dataset, drop_invalid=config.data.drop_invalid)
    _, held_out = data.split_train_eval(conversations, config.data.eval_size, config.training_config.seed)
    if not held_out:
        why = (f"it trained with data.eval_size={config.data.eval_size:g}" if config.data.eval_size == 0 else
               f"its dataset has only {len(conversations)} usable conversation(s), all kept for training")
        raise EvaluationError(f"run {run_id} has no eval split to evaluate on ({why}): start a new run with "
                              "data.eval_size above 0 (e.g. 0.1) on a dataset of at least 2 conversations")
    return config, held_out


def inline_max() -> int:
    """Eval conversations up to which an evaluation may run inline: $PHI3LORA_EVAL_INLINE_MAX, default 64."""
    return env_settings.get_int("PHI3LORA_EVAL_INLINE_MAX")


def should_run_in_background(run_id: str) -> bool:
    """Whether the run's eval split is too large to evaluate while a web request waits."""
    return len(eval_split(run_id)[1]) > inline_max()


def _check_evaluable(run_id: str) -> None:
    if problem := registry.adapter_problem(run_id, registry.run_dir(run_id), "evaluate", "evaluate it"):
        raise EvaluationError(problem)
    eval_split(run_id)
    if evaluation_status(run_id)["status"] in ACTIVE:
        raise EvaluationError(f"run {run_id} is already being evaluated: wait for it to finish")


# --- the evaluation -----------------------------------------------------------------------------------------

def evaluate_run(run_id: str, samples: int = DEFAULT_SAMPLES, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 log: Callable[[str], Any] = print, chat: ChatService | None = None,
                 general_chat: bool = True) -> dict[str, Any]:
    """Evaluate a finished run in this process and write evaluation/; returns the summary. With `chat` (the app's
    ChatService), the chat model is used when it is the run's base, instead of a second copy. Without
    `general_chat`, the forgetting check is left out (on a CPU, a full-size model takes minutes over its set)."""
    folder = _begin(run_id, samples, max_new_tokens)
    with _one_at_a_time(run_id), machine.inline(folder, "evaluate", run=run_id, samples=samples,
                                                max_new_tokens=max_new_tokens, general_chat=general_chat):
        return _evaluate_into(run_id, folder, samples, max_new_tokens, log, chat, general_chat)


def _begin(run_id: str, samples: int, max_new_tokens: int) -> Path:
    """Check the run and clear its last evaluation."""
    if samples < 0 or max_new_tokens < 1:
        raise EvaluationError("samples must be 0 or more and max_new_tokens 1 or more")
    _check_evaluable(run_id)
    folder = evaluation_dir(run_id)
    shutil.rmtree(folder, ignore_errors=True)
    return folder


@contextmanager
def _one_at_a_time(run_id: str):
    """Two callers that both cleared the folder: the second finds the first's queued.json."""
    try:
        yield
    except FileExistsError as error:
        if Path(error.filename or "").name != "queued.json":
            raise
        raise EvaluationError(f"run {run_id} is already being evaluated: wait for it to finish") from None


def _evaluate_into(run_id: str, folder: Path, samples: int, max_new_tokens: int,
                   log: Callable[[str], Any], chat: ChatService | None = None,
                   general_chat: bool = True) -> dict[str, Any]:
    from .model_thread import on_model_thread

    started = time.time()
    config, conversations = eval_split(run_id)
    path = registry.run_dir(run_id)
    with _model_with_adapter(run_id, config, chat, log) as (model, adapter):
        base_loss, adapted_loss, tokens = on_model_thread(eval_losses, model.model, model.tokenizer, conversations,
                                                          config, adapter)
        log(f"loss over {tokens} tokens: base {base_loss:.4f}, adapted {adapted_loss:.4f}")
        general = {}
        if general_chat:
            general = forgetting.general_chat_figures(lambda chats: on_model_thread(
                eval_losses, model.model, model.tokenizer, chats, config, adapter))
            log(f"everyday chat, loss over {general['general_chat_tokens']} tokens: base "
                f"{general['general_chat_base_loss']:.4f}, adapted {general['general_chat_adapted_loss']:.4f}")
        rows = sample_answers(model, conversations[:samples], max_new_tokens, adapter)
    write_samples(folder / "samples.csv", rows)
    summary = {
        "run_id": run_id,
        "base_loss": base_loss, "adapted_loss": adapted_loss,
        "base_perplexity": perplexity(base_loss), "adapted_perplexity": perplexity(adapted_loss),
        "eval_conversations": len(conversations), "eval_tokens": tokens,
        **general,
        "assistant_only_loss": config.training_config.assistant_only_loss,
        "max_length": config.training_config.max_length,
        "samples": len(rows), "max_new_tokens": max_new_tokens,
        "adapter_modified_at": (path / "adapter_model.safetensors").stat().st_mtime,  # tells a stale evaluation
        "seconds": round(time.time() - started, 1), "finished_at": time.time(),
    }
    write_record(folder / "summary.json", summary)
    log(f"done in {summary['seconds']:.0f}s: {folder}")
    return summary


@contextmanager
def _model_with_adapter(run_id: str, config: JobConfig, chat: ChatService | None, log: Callable[[str], Any]):
    """(a SideBySide, the run adapter's name on it): the chat model when it holds the run's base with the same
    settings (no second copy in memory), else a copy of our own, loaded once the GPU's owner (tasks/gpu_memory.py)
    has made room, and held in its ledger while in use."""
    from .engine import SideBySide

    with chat.lend(chat.resolve([f"run:{run_id}"])[0]) if chat is not None else nullcontext() as lent:
        if lent is not None:
            log(f"run {run_id}: evaluating on the chat model already in memory")
            yield lent
            return
    base = choose_base_model(config.model.base_model).name_or_path
    need = gpu_memory.gpu_request("evaluate", f"the evaluation of run {run_id}", base, config.model.dtype,
                                  config.model.load_in_4bit)
    with gpu_memory.claim(need):
        log(f"run {run_id}: loading {config.model.base_model} with its adapter")
        model = SideBySide(config.model.base_model, config.model)
        try:
            model.add_adapter(ADAPTED, registry.run_dir(run_id))
            yield model, ADAPTED
        finally:
            model.release()


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")  # exp overflows a float past ~709


def tokenize_for_loss(tokenizer, conversations: list[data.Conversation], config: JobConfig) -> list[dict[str, list]]:
    """Each conversation as trl's SFTTrainer prepares it: input_ids, and labels with -100 where no loss is taken
    (outside the assistant turns with assistant_only_loss), cut at max_length (keep_start); rows with nothing
    to score are dropped, as the trainer drops them."""
    from ..chat_templates import marked_template

    settings = config.training_config
    assistant_only = settings.assistant_only_loss
    template = marked_template(tokenizer) if assistant_only else None  # the trainer's: it marks the assistant turns
    examples = []
    for conversation in data.conversations_for_template(tokenizer, conversations):  # system text as in training
        encoded = tokenizer.apply_chat_template(conversation.messages, tokenize=True, return_dict=True,
                                                chat_template=template, return_assistant_tokens_mask=assistant_only)
        ids = list(encoded["input_ids"])
        keep = encoded["assistant_masks"] if assistant_only else [1] * len(ids)
        labels = [token if kept else -100 for token, kept in zip(ids, keep)]
        ids, labels = ids[:settings.max_length], labels[:settings.max_length]
        if any(label != -100 for label in labels):
            examples.append({"input_ids": ids, "labels": labels})
    return examples


def eval_losses(model, tokenizer, conversations: list[data.Conversation],
                config: JobConfig, adapter: str = ADAPTED) -> tuple[float, float, int]:
    """(base loss, adapted loss, scored tokens): token-weighted mean losses of the split, batched as in evaluation.
    `adapter` names the run's adapter on `model` (the chat model may hold others)."""
    import torch
    from trl.trainer import add_fused_lm_head
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    if model.active_adapter != adapter:
        model.set_adapter(adapter, inference_mode=True)

    # trl's fused LM head scores the labels without materialising (batch, length, vocab) logits, as in training;
    # a forward without fused_lm_head=True (generate) stays the original one.
    add_fused_lm_head(model.get_base_model())
    examples = sorted(tokenize_for_loss(tokenizer, conversations, config), key=lambda e: -len(e["input_ids"]))
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)  # pads on the right
    size = config.training_config.per_device_eval_batch_size
    batches = [collate(examples[i:i + size]) for i in range(0, len(examples), size)]

    def total(batch: dict) -> tuple[float, int]:
        output = model(**{k: v.to(model.device) for k, v in batch.items()}, fused_lm_head=True)
        return -output.log_probs.double().sum().item(), int(output.label_mask.sum())

    base_sum = adapted_sum = 0.0
    tokens = 0
    with torch.inference_mode():
        for batch in batches:
            adapted, count = total(batch)
            with model.disable_adapter():
                base, _ = total(batch)
            adapted_sum, base_sum, tokens = adapted_sum + adapted, base_sum + base, tokens + count
    if not tokens:
        raise EvaluationError("the eval split has no tokens to score (every conversation was cut away at max_length)")
    return base_sum / tokens, adapted_sum / tokens, tokens


def sample_answers(side_by_side, conversations: list[data.Conversation], max_new_tokens: int,
                   adapter: str = ADAPTED) -> list[dict[str, str]]:
    """Greedy answers of base and adapted to each conversation's last user turn (history and system message kept)."""
    rows = []
    for start in range(0, len(conversations), GENERATE_BATCH):
        chunk = conversations[start:start + GENERATE_BATCH]
        prompts = [_before_last_answer(c.messages) for c in chunk]
        texts = side_by_side.generate([BASE, adapter] * len(chunk), [p for p in prompts for _ in range(2)],
                                      max_new_tokens)
        for conversation, prompt, base, adapted in zip(chunk, prompts, texts[0::2], texts[1::2]):
            rows.append({"prompt": prompt[-1]["content"], "reference": conversation.messages[-1]["content"],
                         "base": base, "adapted": adapted})
    return rows


def _before_last_answer(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    return messages[:last]


# --- files --------------------------------------------------------------------------------------------------

def _needs_quote(text: str) -> bool:
    return text.startswith(("'", "\t", "\r", "\n")) or text.lstrip(_LEADING_SPACE).startswith(_FORMULA_START)


def escape_cell(text: str) -> str:
    """A cell a spreadsheet shows as text: one that starts like a formula gets a leading single quote."""
    return "'" + text if _needs_quote(text) else text


def unescape_cell(text: str) -> str:
    return text[1:] if text[:1] == "'" and _needs_quote(text[1:]) else text


def write_samples(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "x", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({key: escape_cell(row[key]) for key in CSV_COLUMNS} for row in rows)
        f.flush()
        os.fsync(f.fileno())  # on disk before summary.json says the evaluation is complete


def read_evaluation(run_id: str) -> dict[str, Any] | None:
    """{"summary": the figures, "rows": the sample table (text as generated)}, or None until an evaluation is complete."""
    folder = evaluation_dir(run_id)
    summary = read_record(folder / "summary.json")
    if summary is None:
        return None
    with open(folder / "samples.csv", encoding="utf-8-sig", newline="") as f:
        rows = [{key: unescape_cell(value) for key, value in row.items()} for row in csv.DictReader(f)]
    return {"summary": summary, "rows": rows}


# --- background -----------------------------------------------------------------------------------------------

def start_evaluation(run_id: str, samples: int = DEFAULT_SAMPLES, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                     general_chat: bool = True) -> None:
    """Start evaluating a run as a background task and return at once; follow it with evaluation_status."""
    folder = _begin(run_id, samples, max_new_tokens)
    with _one_at_a_time(run_id):
        machine.submit(folder, "evaluate", run=run_id, samples=samples, max_new_tokens=max_new_tokens,
                       general_chat=general_chat,
                       needs_bitsandbytes=load_job(registry.run_dir(run_id) / "config.yaml").needs_bitsandbytes)


def run_task(folder: Path, request: dict[str, Any]) -> None:
    """The body of an evaluation task (tasks/kinds.py "evaluate")."""
    _evaluate_into(request["run"], folder, request["samples"], request["max_new_tokens"], print,
                   general_chat=request.get("general_chat", True))


def evaluation_status(run_id: str) -> dict[str, Any]:
    """{status, message, log}: status "none" (never evaluated) or the task's (queued, running, completed, failed,
    cancelled, interrupted); message says why it did not complete."""
    folder = evaluation_dir(run_id)
    state = machine.state(folder)
    return {"status": state.status if state else NONE, "message": state.reason if state else None,
            "log": str(folder / "evaluate.log")}


def wait_for_evaluation(run_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Block until the evaluation has finished (or the timeout passes); returns its status either way."""
    machine.wait(evaluation_dir(run_id), timeout)
    return evaluation_status(run_id)
