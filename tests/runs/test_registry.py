"""The run registry's parts, without training: incremental reading of metrics, checkpoint validation."""
import pytest

from phi3lora.runs import registry
from phi3lora.training.trainer import checkpoint_problem, latest_valid_checkpoint


def test_metrics_are_read_incrementally(tmp_path):
    path = tmp_path / "metrics.jsonl"
    reader = registry.MetricsReader(path)
    assert reader.update() == []
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # the second line is still being written
    assert reader.update() == [{"step": 1, "loss": 2.0}]
    offset = reader.offset
    with path.open("a") as f:
        f.write('ss": 1.5}\n')
    assert reader.update() == [{"step": 2, "loss": 1.5}]
    assert reader.offset > offset and reader.update() == []
    progress = registry.Progress()
    for event in reader.events + [{"event": "start", "step": 1, "elapsed": 0}, {"step": 3, "eval_loss": 1.0, "elapsed": 4}]:
        progress.add(event)
    assert progress.train_curve == [(1, 2.0), (2, 1.5)] and progress.eval_curve == [(3, 1.0)]


def _fake_checkpoint(folder, step, corrupt=None):
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"a.lora_A.weight": torch.ones(2, 2)}, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text("{}")
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    torch.save({"state": torch.zeros(50)}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    if corrupt:
        data = (folder / corrupt).read_bytes()
        (folder / corrupt).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("corrupt", ["optimizer.pt", "adapter_model.safetensors", "scheduler.pt"])
def test_a_truncated_checkpoint_is_skipped(tmp_path, corrupt):
    _fake_checkpoint(tmp_path / "checkpoint-5", 5)
    _fake_checkpoint(tmp_path / "checkpoint-10", 10, corrupt=corrupt)
    assert checkpoint_problem(tmp_path / "checkpoint-10") is not None
    notes = []
    assert latest_valid_checkpoint(tmp_path, notes.append) == tmp_path / "checkpoint-5"
    assert notes and "skipping checkpoint-10" in notes[0]


def test_a_checkpoint_missing_a_file_is_skipped(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint-3", 3)
    (tmp_path / "checkpoint-3" / "scheduler.pt").unlink()
    assert checkpoint_problem(tmp_path / "checkpoint-3") == "scheduler.pt is missing"
    assert latest_valid_checkpoint(tmp_path, lambda _: None) is None
