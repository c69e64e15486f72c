"""How much memory a training job will take, before anything loads: pure arithmetic from the base's config.json and
the job, without torch, so that `runs start`, the app's Start, the Train tab's form and `train --dry-run` can all
say it in a moment, and refuse a run that would not fit.

    estimate(config)          MemoryEstimate: bytes by component (weights, LoRA, gradients, optimizer, activations,
                              the lm_head's loss tiles, the process's fixed overhead), for the device it would use
    available_memory(device)  what the run may take there: $PHI3LORA_MEMORY_GB, else the GPU's free memory, or
                              RAM's MemAvailable on a CPU
    report(config)            both, and whether it fits, with the sentence the Train tab and `train --dry-run` show
    check_fits(config)        refuse (MemoryWontFit) a job whose estimate exceeds it, naming the figures and the
                              one setting that would make it fit, found by estimating again with that setting changed

The activations are those of a batch of the longest rows (per_device_train_batch_size x max_length tokens): the
worst case, which a dataset of short conversations never reaches. The transient of loading (a bf16 file read while
its fp32 copy is made on a CPU) is not counted: it stays under the training step's peak unless the batch is tiny.

The factors were calibrated against measured peaks (bench/memory_estimate.py, README's Performance table); each
line below says where its factor comes from.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from .. import settings
from ..base_model import choose_base_model, cuda_available, model_file
from ..config import PHI3_LINEAR_MODULES, JobConfig
from ..errors import UserError
from ..job_builder import build_job, values_layer
from ..tasks import gpu_memory

GB = 1024**3
# python + torch + transformers + peft + trl + datasets imported, the tokenizer read and the trainer set up: the peak
# RSS of a whole `train` of a 0-layer demo model on this CPU, 0.55 GB (bench/memory_estimate.py "overhead").
CPU_FIXED_OVERHEAD = int(0.55 * GB)
# A CUDA context and its kernels: not in torch.cuda.max_memory_allocated, which the GPU check compares with; a
# figure commonly seen for one context, not measured on its own.
CUDA_FIXED_OVERHEAD = int(0.75 * GB)
# The peak over what autograd saves: gradients flowing back and the step's temporaries, plus, on a CPU, glibc's
# heap keeping freed blocks. Measured on this CPU: 2.1x (demo, 4 layers) to 2.3x (Phi-3-mini widths, 2 layers) per
# layer. On a GPU only live tensors count, and the backward frees each layer's as it goes: one layer's gradients on
# top, about 1.1x. With these CUDA factors the whole estimate came to 1.08x (checkpointing on) and 1.09x (off)
# torch.cuda.max_memory_allocated of Phi-3-mini at batch 4 x 1,024 on an H200 (bench/gpu_check.py's memory parts).
BACKWARD_FACTOR = {"cpu": 2.2, "cuda": 1.1}
# Copies of one logits tile alive at once in trl's fused lm_head: its torch fallback on a CPU makes about 8 (the
# fp32 tile, exp, probabilities, entropy terms, the top-1 mask; measured 7.8 to 9); Triton fuses them on a GPU.
LOSS_TILE_COPIES = {"cpu": 8, "cuda": 2}
TOKEN_TILE = 4096    # trl's chunked log-prob (trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE): tokens per tile
VOCAB_TILE = 32768   # and vocabulary entries per tile: the full logits are never materialised
ADAM_STATES = 2      # AdamW keeps two moments per trainable weight
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class MemoryWontFit(UserError, MemoryError):
    """The job's estimated memory exceeds what its device has free; the message says the figures and what to change."""


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a base model's config.json."""
    hidden: int
    inner: int
    layers: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config: dict) -> Shape:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return cls(hidden, int(config["intermediate_size"]), int(config["num_hidden_layers"]),
                   int(config["vocab_size"]), heads, int(config.get("num_key_value_heads") or heads),
                   int(config.get("head_dim") or hidden // heads))

    def lora_dimensions(self, module: str) -> tuple[int, int]:
        """(in, out) features of a module LoRA can target (Phi-3's fused qkv and gate_up; the embedding)."""
        return {"qkv_proj": (self.hidden, self.heads * self.head_dim + 2 * self.kv_heads * self.head_dim),
                "o_proj": (self.heads * self.head_dim, self.hidden),
                "gate_up_proj": (self.hidden, 2 * self.inner),
                "down_proj": (self.inner, self.hidden),
                "embed_tokens": (self.vocab, self.hidden)}[module]


@dataclass
class MemoryEstimate:
    device: str  # "cuda" or "cpu"
    dtype: str   # the weights' dtype as resolved for the device
    parts: dict[str, int] = field(default_factory=dict)  # component -> bytes, in the order they are explained
    trainable_parameters: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def lines(self) -> list[str]:
        return [f"{name:<34}{size / GB:7.2f} GB" for name, size in self.parts.items()] + \
            [f"{'total (' + self.where() + ')':<34}{self.total / GB:7.2f} GB"]

    def where(self) -> str:
        return "GPU" if self.device == "cuda" else "RAM"

    def summary(self) -> str:
        """One line: the total and its largest parts."""
        largest = sorted(self.parts.items(), key=lambda item: -item[1])[:3]
        return (f"about {self.total / GB:.2f} GB of {self.where()} ("
                + ", ".join(f"{name} {size / GB:.2f}" for name, size in largest) + ")")

    def to_dict(self) -> dict:
        return {"device": self.device, "dtype": self.dtype, "total_gb": round(self.total / GB, 3),
                "parts_gb": {name: round(size / GB, 3) for name, size in self.parts.items()},
                "trainable_parameters": self.trainable_parameters}


def training_device() -> str:
    """Where a training process would run: a CUDA GPU when torch sees one (asked without torch where certainly not)."""
    return "cuda" if cuda_available() else "cpu"


def resolved_dtype(setting: str, device: str) -> str:
    """modeling.resolve_dtype's answer without torch: auto is fp32 on a CPU and bf16 on a GPU (fp16 on one without
    bf16 is the same size)."""
    if setting != "auto":
        return setting
    return "bfloat16" if device == "cuda" else "float32"


def model_shape(config: JobConfig) -> Shape | None:
    """The base's shape from its config.json (its folder, or the hub cache), or None where it cannot be read."""
    path = _base_path(config)
    return _shape(path) if Path(path).is_dir() else _hub_shape(path)


@functools.lru_cache(maxsize=16)
def _hub_shape(name: str) -> Shape | None:
    # once per process for a hub model: the Train tab estimates at every change, and a hub must not make it wait
    return _shape(name)


def _shape(name_or_path: str) -> Shape | None:
    found = model_file(name_or_path, "config.json")
    try:
        return Shape.of(found) if found else None
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def estimate(config: JobConfig, device: str | None = None, shape: Shape | None = None) -> MemoryEstimate | None:
    """The job's peak memory on `device` (default: the one it would train on), by component; None where the base's
    config.json cannot be read here."""
    device = device or training_device()
    shape = shape or model_shape(config)
    if shape is None:
        return None
    t, p = config.training_config, config.peft_config
    dtype = resolved_dtype(config.model.dtype, device)
    each = DTYPE_BYTES[dtype]
    rows = t.per_device_train_batch_size * (2 if t.objective == "dpo" else 1)  # DPO: each pair's chosen and rejected
    tokens = rows * t.max_length  # a batch of the longest rows: padded or packed to max_length

    linear = shape.layers * sum(i * o for i, o in map(shape.lora_dimensions, PHI3_LINEAR_MODULES))
    counted = gpu_memory.parameter_counts(_base_path(config))  # the stored count where the weights are here
    total_parameters = counted[0] if counted else linear + 2 * shape.vocab * shape.hidden
    rest = max(0, total_parameters - linear)  # embedding, lm_head, norms: never quantised
    modules = PHI3_LINEAR_MODULES if p.target_modules == ["all-linear"] else p.target_modules
    lora = sum(p.r * sum(shape.lora_dimensions(m)) * (1 if m == "embed_tokens" else shape.layers) for m in modules)
    lora_bytes = 4  # peft keeps adapter weights in fp32 (autocast_adapter_dtype), and their gradients too
    adam_bytes = 1 if t.optim.endswith("8bit") else 4  # bitsandbytes' 8-bit states, else fp32 moments

    result = MemoryEstimate(device, dtype, trainable_parameters=lora)
    parts = result.parts
    parts["fixed overhead (libraries)"] = CUDA_FIXED_OVERHEAD if device == "cuda" else CPU_FIXED_OVERHEAD
    if config.model.load_in_4bit:  # NF4 linear weights with double-quantised scales; the rest stays in dtype
        parts["weights (4-bit NF4)"] = int(linear * gpu_memory.NF4_BYTES + rest * each)
        # bitsandbytes dequantises a weight to the compute dtype for each matmul: the largest one, twice at once (the
        # backward's copy while the forward's is freed); measured on Phi-3-mini's widths, 0.83x of the peak without it
        largest = max(i * o for i, o in map(shape.lora_dimensions, PHI3_LINEAR_MODULES))
        parts["4-bit weights dequantised"] = 2 * largest * each
    else:
        parts[f"weights ({dtype})"] = total_parameters * each
    parts["LoRA weights + gradients"] = lora * lora_bytes * 2
    parts["optimizer state"] = lora * ADAM_STATES * adam_bytes
    saved = _saved_activation_bytes(shape, tokens, modules, each, t.gradient_checkpointing, p.lora_dropout > 0)
    parts["activations" + (" (checkpointed)" if t.gradient_checkpointing else "")] = \
        int(saved * BACKWARD_FACTOR[device])
    # trl's fused lm_head: tiles of at most TOKEN_TILE x VOCAB_TILE fp32 logits, never the whole [tokens, vocab]
    parts["loss tiles (lm_head)"] = min(tokens, TOKEN_TILE) * min(shape.vocab, VOCAB_TILE) * 4 \
        * LOSS_TILE_COPIES[device]
    return result


def _saved_activation_bytes(shape: Shape, tokens: int, modules, each: int, checkpointing: bool, dropout: bool) -> int:
    """What autograd keeps between the forward and the backward pass, for `tokens` tokens."""
    h, i = shape.hidden, shape.inner
    qkv = shape.heads * shape.head_dim + 2 * shape.kv_heads * shape.head_dim
    per_layer = (
        2 * 2 * h        # two RMSNorms: each keeps its input and its normalised output
        + qkv + h        # attention: q, k, v after the rotary embedding, and its output
        + 3 * i          # the MLP: gate_up's output (2i) and the SiLU of the gate (i)
        + 2 * h          # the two residual sums, kept for the next norm
    ) * each
    targeted = [m for m in modules if m != "embed_tokens"]
    # each LoRA keeps its dropped-out input for lora_A's gradient (1 byte per feature for the dropout mask)
    per_layer += sum(shape.lora_dimensions(m)[0] for m in targeted) * (each + (1 if dropout else 0))
    if checkpointing:  # only each layer's input is kept; one layer's activations come back during its backward
        return tokens * (shape.layers * h * each + per_layer)
    return tokens * shape.layers * per_layer


# --- what the device has, and the refusal -------------------------------------------------------------------------

def available_memory(device: str) -> tuple[int, str] | None:
    """(bytes a run may take, where that figure comes from), or None where it cannot be known."""
    cap = settings.get_float("PHI3LORA_MEMORY_GB")
    if cap is not None:
        return int(cap * GB), "PHI3LORA_MEMORY_GB"
    if device == "cuda":
        memory = gpu_memory.device_memory()  # imports torch: only where a GPU is in use
        if memory is None:
            return None
        # an idle chat model lets go when a run asks (gpu_memory.make_room): its memory counts as free
        releasable = sum(holder.bytes or 0 for holder in gpu_memory.holders() if holder.releasable)
        return min(memory[1], memory[0] + releasable), "free GPU memory"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available RAM (MemAvailable)"
    except (OSError, ValueError, IndexError):
        pass
    return None


def report(config: JobConfig, device: str | None = None) -> dict:
    """The estimate and what the device has, for a person or a program (the Train tab, `train --dry-run`, the API):
    {"estimate": MemoryEstimate.to_dict() or None, "available_gb", "available_from", "fits", "message"}."""
    device = device or training_device()
    found = estimate(config, device)
    available = available_memory(device)
    fits = None if found is None or available is None else found.total <= available[0]
    result = {"estimate": found.to_dict() if found else None, "fits": fits,
              "available_gb": round(available[0] / GB, 3) if available else None,
              "available_from": available[1] if available else None}
    if found is None:
        result["message"] = "memory estimate: unknown (the base model's config.json is not on this machine)"
    elif fits is False:
        result["message"] = _refusal(config, device, found, *available)
    else:
        free = f"; {available[0] / GB:.2f} GB free ({available[1]})" if available else ""
        result["message"] = f"memory estimate: {found.summary()}{free}"
    return result


def check_fits(config: JobConfig, device: str | None = None) -> str:
    """Refuse a job whose estimate exceeds the memory available to it, before anything is queued or loaded; else
    the estimate's line, for the log."""
    found = report(config, device)
    if found["fits"] is False:
        raise MemoryWontFit(found["message"])
    return found["message"]


def _refusal(config: JobConfig, device: str, found: MemoryEstimate, free: int, source: str) -> str:
    fix = suggestion(config, device, free)
    return (f"this run would need {found.summary()}, and {free / GB:.2f} GB is free ({source}); "
            + (f"it would fit with {fix}" if fix else "no single setting brings it under that: use a machine with "
               "more memory or a smaller base model"))


def _changes(config: JobConfig) -> list[dict]:
    """The single changes to try, those that keep what is learnt first: each as the settings it changes."""
    t = config.training_config
    changes = []
    if not t.gradient_checkpointing:
        changes.append({"training_config.gradient_checkpointing": True})
    for batch in _halvings(t.per_device_train_batch_size):  # the same effective batch, in more steps
        changes.append({"training_config.per_device_train_batch_size": batch,
                        "training_config.gradient_accumulation_steps":
                            t.gradient_accumulation_steps * -(-t.per_device_train_batch_size // batch)})
    if not config.model.load_in_4bit:
        changes.append({"model.load_in_4bit": True})
    for length in _halvings(t.max_length, least=16):  # conversations longer than this are cut
        changes.append({"training_config.max_length": length})
    return changes


def _halvings(value: int, least: int = 1) -> list[int]:
    found = []
    while value // 2 >= least:
        value //= 2
        found.append(value)
    return found


def suggestion(config: JobConfig, device: str, free: int) -> str | None:
    """The first change (in _changes' order) whose own estimate fits in `free` bytes, as settings and its figure."""
    shape = model_shape(config)
    for change in _changes(config):
        changed = build_job(values_layer(change), base=config)
        found = estimate(changed, device, shape)
        if found is not None and found.total <= free:
            settings_text = " and ".join(f"{key}={str(value).lower()}" for key, value in change.items())
            return f"{settings_text} (about {found.total / GB:.2f} GB)"
    return None


def _base_path(config: JobConfig) -> str:
    return choose_base_model(config.model.base_model).name_or_path
