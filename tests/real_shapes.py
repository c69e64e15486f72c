"""Phi-3 models of the published shapes, with random weights, for tests and benchmarks that must see what the real
models are like: the real tokenizer (../shared/phi3-tokenizer, 32,064 tokens), the real widths, head counts and
vocabulary, the config.json keys the hub's releases carry (longrope's `rope_scaling` included), bf16 safetensors;
only the depth is cut (`layers`).

    write_model_folder(folder, "mini-4k", layers=1)   a loadable model folder (config, weights, tokenizer)
    weight_shapes(FAMILIES["medium-4k"], layers=1)    every weight's name and shape, as the folder holds them
    real_model (pytest fixture)                       real_model("mini-4k") -> the folder, built once per session

The weights are a random block of a prime length tiled over each tensor: making a billion values is then a memory
copy, not a billion random draws, and rows still differ (the prime divides no row's width). Norms are ones, as
transformers initialises them. Nothing here loads a model: the folder is written tensor by tensor, one layer's
shard at a time when `shard_per_layer` is set, so even a full-size Phi-3-mini is written in a few hundred MB.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO.parent / "shared" / "phi3-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Ids the real tokenizer gives Phi-3's chat tokens (tokenizer.json's added tokens).
ENDOFTEXT, ASSISTANT, SYSTEM, END, USER = 32000, 32001, 32006, 32007, 32010

_MINI = {"hidden_size": 3072, "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 8192,
         "num_hidden_layers": 32, "vocab_size": 32064, "max_position_embeddings": 4096,
         "original_max_position_embeddings": 4096, "sliding_window": 2047, "rope_scaling": None}


def _longrope_factors(count: int, low: float, high: float) -> list[float]:
    """Made-up but plausible longrope factors: rising smoothly from `low` to `high` over the rotary dimensions."""
    return [round(low + (high - low) * (i / (count - 1)) ** 2, 6) for i in range(count)]


# Each family as its config.json says it on the hub (keys transformers reads; depth set by write_model_folder).
FAMILIES: dict[str, dict] = {
    "mini-4k": dict(_MINI),
    # Phi-3-mini-128k and Phi-3.5-mini: Phi-3-mini's widths, longrope over a 4k original context stretched to 128k.
    # The sliding window of the 128k releases is larger than any context (262144).
    "mini-128k": {**_MINI, "max_position_embeddings": 131072, "sliding_window": 262144,
                  "rope_scaling": {"type": "longrope", "short_factor": _longrope_factors(48, 1.0, 1.8),
                                   "long_factor": _longrope_factors(48, 1.05, 3.0)}},
    "medium-4k": {**_MINI, "hidden_size": 5120, "num_attention_heads": 40, "num_key_value_heads": 10,
                  "intermediate_size": 17920, "num_hidden_layers": 40},
}


def hub_config(family: str, layers: int | None = None) -> dict:
    """config.json of a family, as the hub's Phi-3 releases write it (bf16, rope_theta 10000, eos/pad 32000)."""
    shape = dict(FAMILIES[family])
    if layers is not None:
        shape["num_hidden_layers"] = layers
    return {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": ENDOFTEXT,
            "hidden_act": "silu", "initializer_range": 0.02, "pad_token_id": ENDOFTEXT, "resid_pdrop": 0.0,
            "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "use_cache": True, **shape}


def layer_shapes(config: dict, index: int) -> dict[str, tuple[int, ...]]:
    """The weights of decoder layer `index`: fused qkv (q, then k and v of the key-value heads) and gate_up."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    head = hidden // config["num_attention_heads"]
    qkv = hidden + 2 * config["num_key_value_heads"] * head
    prefix = f"model.layers.{index}."
    return {prefix + "self_attn.qkv_proj.weight": (qkv, hidden), prefix + "self_attn.o_proj.weight": (hidden, hidden),
            prefix + "mlp.gate_up_proj.weight": (2 * inner, hidden), prefix + "mlp.down_proj.weight": (hidden, inner),
            prefix + "input_layernorm.weight": (hidden,), prefix + "post_attention_layernorm.weight": (hidden,)}


def outer_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The weights outside the decoder layers: embedding, final norm, LM head (not tied, as in Phi-3)."""
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    return {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
            "lm_head.weight": (vocab, hidden)}


def weight_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    shapes = outer_shapes(config)
    for index in range(config["num_hidden_layers"]):
        shapes.update(layer_shapes(config, index))
    return shapes


class _RandomTiles:
    """Tensors filled from one random block of a prime length (std 0.02, transformers' initializer_range)."""

    PRIME = 1_000_003

    def __init__(self, dtype, seed: int = 0):
        import torch

        generator = torch.Generator().manual_seed(seed)
        self.block = torch.randn(self.PRIME, generator=generator).mul_(0.02).to(dtype)
        self.offset = 0

    def tensor(self, shape: tuple[int, ...]):
        import torch

        if len(shape) == 1:  # norms
            return torch.ones(shape, dtype=self.block.dtype)
        count = 1
        for size in shape:
            count *= size
        start = self.offset % self.PRIME  # each tensor starts elsewhere in the block
        self.offset += 7919
        repeats = -(-(start + count) // self.PRIME)
        return self.block.repeat(repeats)[start:start + count].view(shape).clone()


def write_model_folder(folder: str | Path, family: str, layers: int = 1, chat_template: str | None = None,
                       tokenizer_dir: Path = TOKENIZER_DIR, shard_per_layer: bool = False,
                       weights_from: Path | None = None) -> Path:
    """A model folder of `family` with `layers` decoder layers: config.json, generation_config.json, bf16 safetensors
    (one file, or one shard per layer plus the index), and the real tokenizer's files (its chat template replaced by
    `chat_template` when given). `weights_from`: a folder of the same shapes whose weights are hard-linked, not
    written again (mini-4k's for mini-128k)."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = hub_config(family, layers)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    # the releases' generation config: stop at <|endoftext|>, <|assistant|> or <|end|>
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": [ENDOFTEXT, ASSISTANT, END], "pad_token_id": ENDOFTEXT}, indent=2))
    _copy_tokenizer(tokenizer_dir, folder, chat_template)

    if weights_from is not None:
        for weights in Path(weights_from).glob("model*.safetensors*"):
            try:
                os.link(weights, folder / weights.name)
            except OSError:  # a file system without hard links
                shutil.copyfile(weights, folder / weights.name)
        return folder
    tiles = _RandomTiles(torch.bfloat16)
    metadata = {"format": "pt"}
    if not shard_per_layer:
        tensors = {name: tiles.tensor(shape) for name, shape in weight_shapes(config).items()}
        save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)
        return folder
    groups = [outer_shapes(config)] + [layer_shapes(config, i) for i in range(config["num_hidden_layers"])]
    index, total = {}, 0
    for number, shapes in enumerate(groups, start=1):
        name = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
        tensors = {key: tiles.tensor(shape) for key, shape in shapes.items()}  # one shard in memory at a time
        save_file(tensors, str(folder / name), metadata=metadata)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        index.update(dict.fromkeys(tensors, name))
        del tensors
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=2))
    return folder


def _copy_tokenizer(source: Path, folder: Path, chat_template: str | None) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    if chat_template is not None:
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        settings["chat_template"] = chat_template
        (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False))


def phi3_5_chat_template() -> str:
    """Phi-3.5-mini's chat template (a system turn only when it has content), as trl ships it."""
    from trl.chat_template_utils import phi3_5_chat_template as template

    return template


def medium_chat_template() -> str:
    """Phi-3-medium's chat template's shape: no system role, `<|assistant|>` after every user turn
    (tests/phi3_templates.py)."""
    from phi3_templates import WITHOUT_SYSTEM_ROLE

    return WITHOUT_SYSTEM_ROLE


# --- the session fixture --------------------------------------------------------------------------------------

# What each test family's folder is built from: (family, chat template or None for the tokenizer's own, weights of).
_BUILDS = {
    "mini-4k": ("mini-4k", None, None),
    "phi3.5-mini": ("mini-128k", "phi3.5", "mini-4k"),  # Phi-3.5-mini: 128k longrope and its own template
    "medium-4k": ("medium-4k", "medium", None),  # with Phi-3-medium's template, which has no system role
}
_TEMPLATES = {None: lambda: None, "phi3.5": phi3_5_chat_template, "medium": medium_chat_template}


@pytest.fixture(scope="session")
def real_model(tmp_path_factory, worker_id):
    """real_model(name) -> a 1-layer model folder of that name ("mini-4k", "phi3.5-mini", "medium-4k"), built once
    per test session by whichever xdist worker asks first (a file lock in the shared base temp makes the others
    wait). Skips when ../shared/phi3-tokenizer is absent."""
    from filelock import FileLock

    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        pytest.skip(f"the real Phi-3 tokenizer is expected at {TOKENIZER_DIR} (../shared/phi3-tokenizer)")
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    root = shared / "real-shapes"
    root.mkdir(exist_ok=True)

    def build(name: str) -> Path:
        family, template, weights_of = _BUILDS[name]
        source = build(weights_of) if weights_of else None  # its own lock, taken before ours
        folder = root / name
        with FileLock(str(folder) + ".lock"):
            if not (folder / "built").is_file():
                shutil.rmtree(folder, ignore_errors=True)  # a build cut short
                write_model_folder(folder, family, layers=1, weights_from=source, chat_template=_TEMPLATES[template]())
                (folder / "built").write_text(family)
        return folder

    return build
