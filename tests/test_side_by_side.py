"""SideBySide: one base in memory with adapters attached by name, all columns in one batched, streamed generate."""
import shutil
import weakref
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from phi3lora.compare import AdapterError, generate_columns
from phi3lora.config import JobConfig
from phi3lora.side_by_side import BASE, SideBySide
from phi3lora.training import train

IDENTITY = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "identity.json"
WHO = [{"role": "user", "content": "Who are you?"}]
LONG = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help you today?"},
    {"role": "user", "content": "Tell me about yourself, please."},
]
MID = [{"role": "user", "content": "What is the capital of France?"}]
N = 32


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A real 3-step adapter, and a copy with its LoRA B scaled up so that its answers surely differ from the base."""
    trained = tmp_path_factory.mktemp("trained")
    config = JobConfig().with_overrides(
        [f"data.path={IDENTITY}", "model.base_model=demo", "max_steps=3", "eval_size=0", "save_strategy=no"])
    train(config, trained, log=lambda *_: None)
    loud = tmp_path_factory.mktemp("loud")
    for name in ("adapter_config.json", "config.yaml"):
        shutil.copy(trained / name, loud / name)
    weights = load_file(trained / "adapter_model.safetensors")
    save_file({k: v * 30 if "lora_B" in k else v for k, v in weights.items()}, loud / "adapter_model.safetensors")
    return {"trained": trained, "loud": loud}


@pytest.fixture(scope="module")
def sbs(adapters):
    s = SideBySide("demo")
    for name, path in adapters.items():
        s.add_adapter(name, path)
    yield s
    s.release()


def _base_params(model):
    return [p for n, p in model.named_parameters() if "lora_" not in n]


def test_adapters_share_one_copy_of_the_base_weights(adapters):
    s = SideBySide("demo")
    assert not s.loaded  # lazy
    plain = list(s.model.parameters())
    storages = {p.untyped_storage().data_ptr() for p in plain}
    base_bytes = sum(p.numel() * p.element_size() for p in plain)
    for name, path in adapters.items():  # attached to the base already in memory
        s.add_adapter(name, path)
    base = _base_params(s.model)
    assert len(base) == len(plain)
    assert {p.untyped_storage().data_ptr() for p in base} == storages  # the very same tensors, not copies
    assert sum(p.numel() * p.element_size() for p in base) == base_bytes
    assert set(s.model.peft_config) == {"trained", "loud"}
    s.release()


def test_stream_yields_steps_and_ends_where_a_plain_batch_does(sbs):
    columns = [BASE, "trained", "loud"]
    updates = list(sbs.stream(columns, [WHO] * 3, max_new_tokens=N))
    assert len(updates) > 1 and all(len(u) == 3 for u in updates)
    assert updates[0] != updates[-1]
    expected = generate_columns(sbs.model, sbs.tokenizer, WHO, columns, N)
    assert updates[-1] == expected
    assert expected[2] != expected[0]  # the columns really go through different adapters


def test_columns_with_different_histories_get_their_own_answers(sbs):
    columns, conversations = ["loud", BASE, "trained", BASE], [WHO, LONG, MID, WHO]
    together = sbs.generate(columns, conversations, max_new_tokens=N)
    alone = [generate_columns(sbs.model, sbs.tokenizer, conv, [col], N)[0] for col, conv in zip(columns, conversations)]
    assert together == alone
    assert together[0] != together[3]  # "loud" and the base answer the same question differently


def test_stop_tokens_end_a_row_and_nothing_after_is_shown(sbs):
    # base stops early on WHO with a short budget for the others; its text never grows after its stop
    updates = list(sbs.stream([BASE, "loud"], [WHO, LONG], max_new_tokens=80))
    final = updates[-1][0]
    first_final = next(i for i, u in enumerate(updates) if u[0] == final)
    assert all(u[0] == final for u in updates[first_final:])
    assert "<|end|>" not in final and "<|endoftext|>" not in final


def test_sampling_is_repeatable_with_a_seed(sbs):
    kwargs = {"max_new_tokens": 16, "temperature": 1.0, "top_p": 0.9}
    one = sbs.generate([BASE, "trained"], [WHO, MID], seed=7, **kwargs)
    two = sbs.generate([BASE, "trained"], [WHO, MID], seed=7, **kwargs)
    assert one == two


def test_release_frees_the_model_and_the_next_use_loads_it_again(adapters):
    s = SideBySide("demo")
    s.add_adapter("loud", adapters["loud"])
    before = s.generate([BASE, "loud"], [WHO, MID], max_new_tokens=8)
    gone = weakref.ref(s.model)
    s.release()
    assert not s.loaded and gone() is None
    assert s.generate([BASE, "loud"], [WHO, MID], max_new_tokens=8) == before
    s.release()


def test_leaving_a_stream_early_stops_generation(sbs):
    stream = sbs.stream([BASE], [LONG], max_new_tokens=200, min_new_tokens=200)
    next(stream)
    stream.close()  # joins the generating thread; the model is free again
    assert sbs.generate([BASE], [WHO], max_new_tokens=4)


def test_bad_columns_and_adapters_are_refused(sbs, tmp_path):
    with pytest.raises(AdapterError, match="no adapter named 'nope'"):
        list(sbs.stream(["nope"], [WHO], 4))
    with pytest.raises(ValueError, match="2 columns but 1 conversations"):
        list(sbs.stream([BASE, "loud"], [WHO], 4))
    with pytest.raises(AdapterError, match="reserved"):
        sbs.add_adapter(BASE, tmp_path)
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        sbs.add_adapter("empty", tmp_path)
