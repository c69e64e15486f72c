"""Early stopping on the eval loss, in one real run of the demo model through the run registry (a background task): a
learning rate far too high makes the eval loss rise after the first step, so the run stops `PATIENCE` evaluations
after its best, and its adapter is that best checkpoint's, bit for bit. The same run reports to TensorBoard, into its
own folder. Refusals are checked without training: they come before any run is queued."""
import json

import pytest
from safetensors.torch import load_file

from conftest import run_cli
from phi3lora.config import ConfigError, JobConfig
from phi3lora.job_builder import override, resolve_job
from phi3lora.runs import lifecycle, registry
from phi3lora.training import options

PATIENCE = 2


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("early-stopping") / "home"
        patch.setenv("PHI3LORA_HOME", str(root))
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        yield root


def _job(identity_data, *settings):
    return override(JobConfig(), [f"data.path={identity_data}", "model.base_model=demo", "data.eval_size=8",
                                  "learning_rate=0.3", "lr_scheduler_type=constant", "warmup_ratio=0", "max_steps=20",
                                  "eval_strategy=steps", "eval_steps=1", "save_strategy=steps", "save_steps=1",
                                  "logging_steps=1", *settings])


@pytest.fixture(scope="module")
def stopped_run(home, identity_data):
    """(run folder, its summary.json, its eval losses by step): a run whose eval loss rises, stopped early."""
    run_id = lifecycle.start_run(_job(identity_data, f"early_stopping_patience={PATIENCE}", "report_to=tensorboard"))
    info = lifecycle.wait_for_run(run_id, timeout=600)
    assert info.status == "completed", (info.reason, lifecycle.log_tail(run_id))
    path = registry.run_dir(run_id)
    events = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    evals = {event["step"]: event["eval_loss"] for event in events if "eval_loss" in event}
    return path, json.loads((path / "summary.json").read_text()), evals


def test_a_rising_eval_loss_stops_within_patience_and_keeps_the_best_checkpoint(stopped_run):
    path, summary, evals = stopped_run
    best = min(evals, key=evals.get)
    assert summary["stopped_early"] and summary["best_step"] == best
    assert summary["global_step"] == best + PATIENCE < 20  # each later evaluation was no better, then it stopped
    assert all(evals[step] >= evals[best] for step in evals if step > best)
    assert summary["eval_loss"] == pytest.approx(evals[best])  # the kept adapter's, not the last step's
    kept = load_file(path / "adapter_model.safetensors")
    best_weights = load_file(path / "checkpoints" / f"checkpoint-{best}" / "adapter_model.safetensors")
    last_weights = load_file(path / "checkpoints" / f"checkpoint-{summary['global_step']}" / "adapter_model.safetensors")
    assert kept.keys() == best_weights.keys() and kept
    assert all(kept[name].equal(best_weights[name]) for name in kept)
    assert not all(kept[name].equal(last_weights[name]) for name in kept)  # the last step's weights were not kept
    assert summary["stop_reason"].startswith(f"stopped early at step {best + PATIENCE} of 20: the eval loss did not "
                                             f"improve for {PATIENCE} evaluations in a row; kept step {best} ")


def test_runs_show_and_the_loss_plot_say_which_step_was_kept(stopped_run):
    from phi3lora.ui.train_progress import KEPT, _curves_frame

    path, summary, _ = stopped_run
    shown = run_cli("runs", "show", path.name)
    assert shown.returncode == 0, shown.stderr
    assert f"stopped:  {summary['stop_reason']}" in shown.stdout
    info = lifecycle.run_info(path.name)
    assert (info.best_step, info.stop_reason) == (summary["best_step"], summary["stop_reason"])
    watcher = lifecycle.RunWatcher(path.name)
    watcher.info()
    progress = watcher.progress
    frame = _curves_frame(progress.train_curve, progress.eval_curve, progress.best_step)
    marker = frame[frame["split"] == KEPT]
    assert list(marker["step"]) == [summary["best_step"]] * 2  # a vertical line at the kept step
    assert list(marker["loss"]) == [frame["loss"].min(), frame["loss"].max()]


def test_tensorboard_logs_go_into_the_run_folder(stopped_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, summary, evals = stopped_run
    events = EventAccumulator(str(path / options.TENSORBOARD_DIR))
    events.Reload()
    logged = {event.step: event.value for event in events.Scalars("eval/loss")}
    assert logged == pytest.approx(evals)
    assert not (path / "checkpoints" / "runs").exists()  # not transformers' default place


@pytest.mark.parametrize("settings, refusal", [
    (["early_stopping_patience=2", "eval_strategy=no"], "training_config.early_stopping_patience: early stopping "
     "watches the eval loss, but eval_strategy is 'no'"),
    (["early_stopping_patience=2", "save_strategy=epoch"], "save_strategy must equal eval_strategy ('steps'), not "
     "'epoch'"),
    (["early_stopping_patience=2", "save_steps=2"], "save_steps (2) must equal eval_steps (1)"),
])
def test_early_stopping_without_a_checkpoint_per_evaluation_is_refused(identity_data, settings, refusal):
    with pytest.raises(ConfigError, match="^training_config.early_stopping_patience: .*") as refused:
        _job(identity_data, *settings)
    assert refusal in str(refused.value)


def test_early_stopping_without_an_eval_split_is_refused_before_queueing(home, identity_data):
    with pytest.raises(ConfigError, match=r"^training_config.early_stopping_patience: .*data.eval_size is 0"):
        lifecycle.start_run(_job(identity_data, "early_stopping_patience=2", "data.eval_size=0"))


def test_a_tracker_that_is_not_installed_is_refused_with_its_install_command(home, identity_data, monkeypatch):
    before = set(registry.runs_root().glob("*")) if registry.runs_root().is_dir() else set()
    found = options.importlib.util.find_spec
    monkeypatch.setattr(options.importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else found(name, *a))
    with pytest.raises(ConfigError) as refused:
        lifecycle.start_run(_job(identity_data, "report_to=trackio"))
    assert str(refused.value) == ("training_config.report_to: trackio is not installed here: pip install trackio (or "
                                  "pip install -r requirements-trackers.txt), or set report_to=none")
    assert (set(registry.runs_root().glob("*")) if registry.runs_root().is_dir() else set()) == before
    resolve_job(_job(identity_data, "report_to=tensorboard"))  # an installed one passes
