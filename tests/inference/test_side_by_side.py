"""SideBySide: one base in memory with adapters attached by name, all columns in one batched, streamed generate."""
import json
import random
import shutil
import weakref

import pytest

from conftest import REPO
import torch
from safetensors.torch import load_file, save_file

from phi3lora.inference.adapter_info import AdapterError
from phi3lora.inference.adapters import generate_columns
from phi3lora.config import JobConfig
from phi3lora.modeling import load_tokenizer, stop_token_ids
from phi3lora.inference.engine import _DONE, BASE, ColumnStreamer, SideBySide
from phi3lora.training.trainer import train
from phi3lora.job_builder import override

DEMO = REPO / "phi3lora" / "demo_model"
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
def adapters(tmp_path_factory, identity_data):
    """A real 3-step adapter, and a copy with its LoRA B scaled up so that its answers surely differ from the base."""
    trained = tmp_path_factory.mktemp("trained")
    config = override(JobConfig(),
        [f"data.path={identity_data}", "model.base_model=demo", "max_steps=3", "eval_size=0", "save_strategy=no"])
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


# ---- incremental decoding -------------------------------------------------------------------------------------
TEXT = "Hello world — naïve café, señor! 日本語のテキスト 🎉🎊 Ωμέγα x≠y  two  spaces\n\tand a tab"


def _byte_fallback_tokenizer():
    """A small Llama/Phi-3-style tokenizer (SentencePiece-like: ▁ for spaces, <0xNN> byte fallback, a decoder
    that strips the leading space), trained here: the demo model's tokenizer is byte-level BPE instead."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = ["Hello world, this is a tiny corpus.", "The quick brown fox jumps over the lazy dog.",
              "Hello there! How are you today?", "naïve café señor"] * 5
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"]))
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


class _CountingTokenizer:
    """Records how many tokens every decode call is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.sizes = tokenizer, []

    def decode(self, tokens, **kwargs):
        self.sizes.append(len(tokens))
        return self.tokenizer.decode(tokens, **kwargs)


def _stream_tokens(tokenizer, rows: list[list[int]], stops: list[int]):
    """Feed `rows` to a ColumnStreamer one token per step; check every step's texts against a full decode."""
    counting = _CountingTokenizer(tokenizer)
    streamer = ColumnStreamer(counting, len(rows), stops)
    streamer.put(torch.zeros(len(rows), 3, dtype=torch.long))  # the prompt
    for step in range(max(map(len, rows))):
        streamer.put(torch.tensor([row[step] if step < len(row) else stops[0] for row in rows]))
        shown = streamer.queue.get()
        for text, row in zip(shown, rows):
            tokens = row[:step + 1]
            tokens = tokens[:next((i for i, t in enumerate(tokens) if t in stops), len(tokens))]
            full = tokenizer.decode(tokens, skip_special_tokens=True)
            if not full.endswith("\ufffd"):  # an incomplete character (or undecodable bytes) is held back
                assert text == full.strip(), (step, tokens)
    steps_sizes = list(counting.sizes)
    streamer.end()
    items = []
    while (item := streamer.queue.get()) is not _DONE:
        items.append(item)
    final = items[-1] if items else shown
    assert final == [tokenizer.decode(t, skip_special_tokens=True).strip() for t in streamer.tokens]
    return steps_sizes


@pytest.mark.parametrize("kind", ["demo byte-level BPE", "byte-fallback"])
def test_incremental_decoding_shows_what_a_full_decode_shows(kind):
    tokenizer = load_tokenizer(str(DEMO)) if kind.startswith("demo") else _byte_fallback_tokenizer()
    stops = stop_token_ids(tokenizer)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == TEXT
    # multi-byte characters split over several tokens, merged tokens, spaces at the seams
    sizes = _stream_tokens(tokenizer, [ids, ids[7:]], stops)
    # a few tokens per decode, however long the row: the chunk shown last, as context, and the tokens held back
    # (8 = an emoji's 4 byte tokens, twice)
    assert len(ids) > 40 and max(sizes) <= 8
    # whatever a model may emit: tokens in any order, undecodable byte runs, special and stop tokens
    _stream_tokens(tokenizer, [ids[::-1], ids[::2]], stops)
    rng = random.Random(0)
    for _ in range(40):
        _stream_tokens(tokenizer, [[rng.randrange(len(tokenizer)) for _ in range(40)] for _ in range(2)], stops)


def test_a_character_cut_at_the_end_still_shows_in_full_at_the_end():
    tokenizer = _byte_fallback_tokenizer()
    ids = tokenizer("Hi 🎉", add_special_tokens=False)["input_ids"]  # the emoji is 4 byte tokens
    streamer = ColumnStreamer(tokenizer, 1, stop_token_ids(tokenizer))
    streamer.put(torch.zeros(1, 1, dtype=torch.long))
    shown = []
    for token in ids[:-1]:  # the answer ends (max_new_tokens) one byte short of the emoji
        streamer.put(torch.tensor([token]))
        shown.append(streamer.queue.get()[0])
    assert shown[-1] == "Hi"  # never a half character
    streamer.end()
    assert streamer.queue.get() == [tokenizer.decode(ids[:-1]).strip()]  # then exactly what the tokens say
    assert streamer.queue.get() is _DONE
