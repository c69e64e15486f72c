"""Packing (training_config.packing): several conversations share a row without padding, and none sees another."""
import pytest
import torch

from phi3lora.config import JobConfig
from phi3lora.training.trainer import prepare, train

from phi3lora.job_builder import override


def packed_trainer(tmp_path, data_path, attention: str, *extra: str):
    config = override(JobConfig(), [
        f"data.path={data_path}", "model.base_model=demo", "packing=true", "max_length=512",
        "per_device_train_batch_size=2", "eval_size=0", f"attn_implementation={attention}", *extra])
    return prepare(config, tmp_path, log=lambda *_: None).trainer


def segments(position_ids: torch.Tensor) -> list[slice]:
    starts = (position_ids == 0).nonzero().flatten().tolist() + [len(position_ids)]
    return [slice(a, b) for a, b in zip(starts, starts[1:])]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_conversation_computes_what_it_computes_alone(tmp_path, identity_data, attention):
    trainer = packed_trainer(tmp_path, identity_data, attention)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # one row, no padding
    ids, positions = batch["input_ids"][0], batch["position_ids"][0]
    parts = segments(positions)
    assert len(parts) >= 3, "identity conversations are ~20-60 tokens: a 512-token row holds several"
    assert (batch["labels"][0] != -100).any()
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(input_ids=ids[None], position_ids=positions[None]).logits[0]
        unmasked = model(input_ids=ids[None]).logits[0]  # the same row read as one long text
        for part in parts:
            alone = model(input_ids=ids[None, part]).logits[0]
            torch.testing.assert_close(packed[part], alone, rtol=1e-4, atol=1e-4)
    # the check can fail: without the restarting position ids, later conversations see the earlier ones
    assert not torch.allclose(unmasked[parts[-1]], packed[parts[-1]], atol=1e-3)


def test_packed_training_learns_and_takes_fewer_steps(tmp_path, identity_data):
    steps = {}
    for packing in ("false", "true"):
        result = train(override(JobConfig(), [
            f"data.path={identity_data}", "model.base_model=demo", f"packing={packing}",
            "max_length=512", "per_device_train_batch_size=4", "num_train_epochs=1", "eval_size=0.1",
            "save_strategy=no", "logging_steps=1"]), tmp_path / packing, log=lambda *_: None)
        steps[packing] = result.global_step
        assert result.train_loss is not None and result.eval_loss is not None
    assert steps["true"] < 0.6 * steps["false"]  # rows of two or more conversations: fewer batches per epoch
