"""Held-out evaluation of a real run (the demo model trained briefly on the identity sample through the run registry):
the adapted model scores better than its base on the run's eval split, exactly as the trainer scored it; the sample
table holds the split's reference answers; the CLI and the background process work; refusals are plain sentences."""
import csv
import io
import json
import math
import shutil

import pytest
import safetensors
import torch

from conftest import run_cli
from phi3lora import data
from phi3lora.data.samples import shipped_samples
from phi3lora.inference import evaluation, forgetting
from phi3lora.runs import lifecycle
from phi3lora.runs import registry
from phi3lora.config import JobConfig
from phi3lora.errors import UserError
from phi3lora.tasks import processes, records
from phi3lora.job_builder import load_job, override

STEPS = 6
SAMPLES = 5


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("evaluation") / "home"
        patch.setenv("PHI3LORA_HOME", str(root))  # settings.data_root reads it on every call, as do the processes started
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        patch.delenv("PHI3LORA_EVAL_INLINE_MAX", raising=False)
        yield root


@pytest.fixture(scope="module")
def run_id(identity_data):
    """A completed run with an eval split of 18 conversations and an eval at its last step."""
    config = override(JobConfig(), [
        f"data.path={identity_data}", "model.base_model=demo", "data.eval_size=0.2",
        f"max_steps={STEPS}", "eval_strategy=steps", f"eval_steps={STEPS}", "save_strategy=no", "logging_steps=3"])
    run_id = lifecycle.start_run(config)
    info = lifecycle.wait_for_run(run_id, timeout=600)
    assert info.status == "completed", (info.reason, lifecycle.log_tail(run_id))
    return run_id


@pytest.fixture(scope="module")
def evaluated(run_id):
    """The run evaluated inline: (summary returned, read_evaluation, samples.csv as written)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "GENERATE_BATCH", 3)  # 5 samples: two generate calls
        summary = evaluation.evaluate_run(run_id, samples=SAMPLES, max_new_tokens=16, log=lambda *_: None)
    folder = evaluation.evaluation_dir(run_id)
    return summary, evaluation.read_evaluation(run_id), (folder / "samples.csv").read_text(encoding="utf-8-sig")


def _identity_split(identity_data):
    conversations = data.usable_conversations(data.read_dataset(identity_data))
    return data.split_train_eval(conversations, 0.2, 42)[1]


def test_the_adapted_model_scores_better_and_as_the_trainer_scored_it(run_id, evaluated):
    summary, result, _ = evaluated
    assert summary["adapted_loss"] < summary["base_loss"]
    assert summary["base_perplexity"] == pytest.approx(math.exp(summary["base_loss"]))
    assert summary["adapted_perplexity"] == pytest.approx(math.exp(summary["adapted_loss"]))
    assert summary["eval_conversations"] == 18 and summary["eval_tokens"] > 18 and summary["samples"] == SAMPLES
    assert summary["seconds"] > 0 and summary["finished_at"] > 0
    trained = json.loads((registry.run_dir(run_id) / "summary.json").read_text())
    assert trained["global_step"] == STEPS
    assert summary["adapted_loss"] == pytest.approx(trained["eval_loss"], rel=0.02)
    logged = [json.loads(line) for line in (registry.run_dir(run_id) / "metrics.jsonl").read_text().splitlines()]
    assert [e["eval_loss"] for e in logged if "eval_loss" in e][-1] == trained["eval_loss"]
    assert result["summary"] == json.loads((evaluation.evaluation_dir(run_id) / "summary.json").read_text())
    assert evaluation.evaluation_status(run_id)["status"] == "completed"


def test_the_forgetting_check_scores_both_models_on_the_shipped_everyday_chat(evaluated):
    summary = evaluated[0]
    assert summary["general_chat_conversations"] == len(forgetting.general_chat()) == 36
    assert summary["general_chat_tokens"] > 20 * 36  # every assistant answer scored, not the prompts
    base, adapted = summary["general_chat_base_loss"], summary["general_chat_adapted_loss"]
    assert math.isfinite(base) and math.isfinite(adapted) and base != adapted  # the adapter is on for one of them
    change = f"{(adapted - base) / base * 100:+.1f}%"
    assert forgetting.forgetting_sentence(summary).startswith(
        f"On everyday chat (36 general conversations that ship with phi3lora) the adapter's loss is {adapted:.3f} "
        f"vs base {base:.3f}: {change} (")
    assert "general_chat.jsonl" not in shipped_samples()  # never offered for training on the Data tab


def test_the_forgetting_wording_says_worse_better_or_about_the_same():
    def sentence(base, adapted):
        return forgetting.forgetting_sentence({"general_chat_base_loss": base, "general_chat_adapted_loss": adapted,
                                               "general_chat_conversations": 36})

    assert sentence(2.0, 2.5).endswith("2.500 vs base 2.000: +25.0% (worse); that is what the adapter cost elsewhere.")
    assert sentence(2.0, 1.5).endswith("1.500 vs base 2.000: -25.0% (better).")
    assert sentence(2.0, 2.01).endswith("+0.5% (about the same).")
    assert forgetting.forgetting_sentence({"base_loss": 1.0, "adapted_loss": 0.5}) is None  # an older evaluation
    assert forgetting.gain_sentence({"base_loss": 4.0, "adapted_loss": 1.0}) == (
        "On its own eval split the adapter's loss is 1.000 vs base 4.000: -75.0% (better).")


def test_scoring_is_the_trainers_exactly_when_batched_as_the_trainer_batches(run_id):
    """The trainer averages per-batch means over length-grouped batches (group_by_length); done the same way, the
    tokens, masks and per-token losses evaluation uses give the trainer's logged eval_loss to float precision."""
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl.trainer import add_fused_lm_head
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from phi3lora.inference.engine import SideBySide

    config, conversations = evaluation.eval_split(run_id)
    model = SideBySide(config.model.base_model, config.model)
    model.add_adapter("adapted", registry.run_dir(run_id))
    add_fused_lm_head(model.model.get_base_model())
    examples = evaluation.tokenize_for_loss(model.tokenizer, conversations, config)
    size = config.training_config.per_device_eval_batch_size
    order = list(LengthGroupedSampler(size, lengths=[len(e["input_ids"]) for e in examples],
                                      generator=torch.Generator().manual_seed(config.training_config.seed)))
    collate = DataCollatorForLanguageModeling(pad_token_id=model.tokenizer.pad_token_id)
    losses = []
    with torch.inference_mode():
        for start in range(0, len(order), size):
            batch = [examples[i] for i in order[start:start + size]]
            losses += [model.model(**collate(batch), fused_lm_head=True).loss.item()] * len(batch)
    trained = json.loads((registry.run_dir(run_id) / "summary.json").read_text())
    assert sum(losses) / len(losses) == pytest.approx(trained["eval_loss"], rel=1e-5)
    # only assistant tokens are scored: every label is -100 up to the assistant's turn
    first = examples[0]
    assistant_start = first["input_ids"].index(model.tokenizer.convert_tokens_to_ids("<|assistant|>"))
    assert set(first["labels"][:assistant_start + 1]) == {-100} and first["labels"][-1] != -100


def test_the_sample_table_holds_the_eval_splits_reference_answers(evaluated, identity_data):
    _, result, text = evaluated
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["prompt", "reference", "base", "adapted"] and len(table) == 1 + SAMPLES
    expected = [(c.messages[-2]["content"], c.messages[-1]["content"]) for c in _identity_split(identity_data)[:SAMPLES]]
    assert [(row[0], row[1]) for row in table[1:]] == expected
    records = {tuple(m["content"] for m in json.loads(line)["messages"]) for line in identity_data.open()}
    assert set(expected) <= records
    assert [(row["prompt"], row["reference"]) for row in result["rows"]] == expected
    assert all(row["base"] for row in result["rows"])  # the demo base always has something to say


def test_cells_that_look_like_formulas_are_neutralised_and_read_back_unchanged(tmp_path):
    for text in ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=quoted", "'plain"]:
        assert evaluation.escape_cell(text) == "'" + text
        assert evaluation.unescape_cell(evaluation.escape_cell(text)) == text
    for text in ["plain", "", "a=b", "1-2", "don't"]:
        assert evaluation.escape_cell(text) == text == evaluation.unescape_cell(text)
    path = tmp_path / "samples.csv"
    evaluation.write_samples(path, [{"prompt": "=1+1", "reference": "-", "base": "ok", "adapted": "@me, \"q\"\nx"}])
    rows = list(csv.reader(path.open(encoding="utf-8-sig", newline="")))
    assert rows[1] == ["'=1+1", "'-", "ok", "'@me, \"q\"\nx"]


def test_the_cli_prints_base_and_adapted_loss_and_where_the_files_are(run_id, evaluated):
    done = run_cli("evaluate", run_id, "--samples", "2", "--max-new-tokens", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = evaluation.read_evaluation(run_id)["summary"]
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"run {run_id}: eval split of 18 conversations")
    assert lines[2].split() == ["base", f"{summary['base_loss']:.4f}", f"{summary['base_perplexity']:.3f}"]
    assert lines[3].split() == ["adapted", f"{summary['adapted_loss']:.4f}", f"{summary['adapted_perplexity']:.3f}"]
    assert str(evaluation.evaluation_dir(run_id) / "samples.csv") + " (2 rows)" in done.stdout
    assert forgetting.gain_sentence(summary) in lines and forgetting.forgetting_sentence(summary) in lines
    assert summary["samples"] == 2 and summary["adapted_loss"] == pytest.approx(evaluated[0]["adapted_loss"], rel=1e-6)


def test_a_background_evaluation_reports_running_then_completed(run_id, evaluated):
    evaluation.start_evaluation(run_id, samples=1, max_new_tokens=4)
    assert evaluation.evaluation_status(run_id)["status"] in ("queued", "running")
    with pytest.raises(evaluation.EvaluationError, match=f"run {run_id} is already being evaluated"):
        evaluation.start_evaluation(run_id)
    with pytest.raises(lifecycle.RunStateError, match=f"run {run_id} is being evaluated"):
        lifecycle.delete_run(run_id)  # the evaluation reads the adapter: it must not vanish underneath it
    status = evaluation.wait_for_evaluation(run_id, timeout=300)
    assert status["status"] == "completed", (status, records.log_tail(evaluation.evaluation_dir(run_id) / "evaluate.log"))
    result = evaluation.read_evaluation(run_id)
    assert result["summary"]["samples"] == 1 and len(result["rows"]) == 1
    shown = run_cli("evaluate", run_id, "--status", "--json")
    assert json.loads(shown.stdout)["status"] == "completed"


def _clone(run_id: str, *overrides: str, keep_adapter: bool = True) -> str:
    """A copy of the trained run under a new id, its config changed by `overrides`."""
    new_id = registry.new_run_id()
    source, target = registry.run_dir(run_id), registry.runs_root() / new_id
    skip = ["evaluation", "checkpoints"] + ([] if keep_adapter else ["adapter_model.safetensors"])
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*skip))
    meta = json.loads((source / "run.json").read_text())
    (target / "run.json").write_text(json.dumps({**meta, "id": new_id}) + "\n")
    config = override(load_job(source / "config.yaml"), list(overrides))
    (target / "config.yaml").write_text(config.to_yaml())
    return new_id


def test_runs_that_cannot_be_evaluated_are_refused_in_plain_words(run_id, tmp_path, identity_data):
    no_split = _clone(run_id, "data.eval_size=0")
    with pytest.raises(evaluation.EvaluationError, match=rf"run {no_split} has no eval split to evaluate on \(it "
                                                         r"trained with data.eval_size=0\): start a new run"):
        evaluation.evaluate_run(no_split)
    assert evaluation.evaluation_status(no_split)["status"] == "none" and evaluation.read_evaluation(no_split) is None

    one = tmp_path / "one.jsonl"
    one.write_text(identity_data.read_text().splitlines(keepends=True)[0])
    with pytest.raises(evaluation.EvaluationError, match="has only 1 usable conversation"):
        evaluation.start_evaluation(_clone(run_id, f"data.path={one}"))

    with pytest.raises(evaluation.EvaluationError, match=r"has no adapter yet \(its training ended completed\)"):
        evaluation.evaluate_run(_clone(run_id, keep_adapter=False))

    training = _clone(run_id)
    records.write_record(registry.run_dir(training) / "attempts" / "2" / "queued.json", {"queued_at": 0, "resume": True})
    with pytest.raises(evaluation.EvaluationError, match=f"run {training} is queued: evaluate it once training"):
        evaluation.evaluate_run(training)

    with pytest.raises(registry.RunNotFound, match="no run 20990101-000000-abcdef on this server"):
        evaluation.evaluate_run("20990101-000000-abcdef")
    with pytest.raises(UserError, match="'../x' is not a run id"):
        evaluation.start_evaluation("../x")
    done = run_cli("evaluate", no_split)
    assert done.returncode == 1 and done.stderr.startswith(f"error: run {no_split} has no eval split")
    assert "Traceback" not in done.stderr


def test_a_failed_or_vanished_evaluation_reports_why(run_id):
    broken = _clone(run_id)
    (registry.run_dir(broken) / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(safetensors.SafetensorError):
        evaluation.evaluate_run(broken, log=lambda *_: None)
    status = evaluation.evaluation_status(broken)
    assert status["status"] == "failed" and status["message"].startswith("SafetensorError: ")

    vanished = _clone(run_id)
    folder = evaluation.evaluation_dir(vanished)
    records.write_record(folder / "queued.json", {"kind": "evaluate", "run": vanished, "queued_at": 0})
    records.write_record(folder / "supervisor.json", {"pid": 999999999, "started": 0.0, "host": processes.HOST})
    (folder / "evaluate.log").write_text("loading\nRuntimeError: boom\n")
    status = evaluation.evaluation_status(vanished)
    assert status["status"] == "interrupted" and "its process is gone" in status["message"]
    assert "RuntimeError: boom" in status["message"]


def test_large_eval_splits_go_to_the_background(run_id, monkeypatch):
    assert not evaluation.should_run_in_background(run_id)  # 18 conversations, inline up to 64
    monkeypatch.setenv("PHI3LORA_EVAL_INLINE_MAX", "17")
    assert evaluation.should_run_in_background(run_id)
