"""CPU linears on a few rows computed as W @ x^T: what makes a side-by-side batch cheaper than its columns apart.

Every decoding step of a side-by-side `generate` feeds each linear layer one token per column: 2 to 4 rows. On
the CPU, torch's F.linear (x @ W^T) on 2 rows costs about twice what it costs on one, as if each row read the
weight on its own, so a batch of two columns saved little over generating them one after the other. The same
product taken the other way round, W @ x^T, costs about what one row does. Measured on this project's machine
(2 cores of an AMD EPYC, torch 2.13, fp32), the demo model, base + one adapter, 128 new tokens each, one thread:
peft's mixed batch 0.72x the two columns generated one after the other; with its linears in this form, 0.54x.
A single row gains nothing from it (sequential 0.99x), and from about 5 rows on F.linear is the faster again.

`few_row_linears(model)` gives the model's plain CPU fp32 nn.Linear layers that form for inputs of 2 to 4 rows
while inside, and F.linear otherwise. peft keeps routing every row to its adapter: its LoRA layers call these
linears (their base layer, lora_A, lora_B) as they always do. Layers something else already wraps (hooks, a
replaced forward, quantized layers) are left alone; the GPU is left alone.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FEW_ROWS", "few_row_linears"]

FEW_ROWS = range(2, 5)  # rows (tokens) for which W @ x^T is the faster form on the CPU


class _FewRowLinear:
    """A linear's forward: W @ x^T (+ bias) on 2 to 4 rows of its own dtype, F.linear on anything else."""

    __slots__ = ("linear",)

    def __init__(self, linear: nn.Linear):
        self.linear = linear

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.linear.weight, self.linear.bias
        features = x.shape[-1] if x.dim() else 0
        if not features or x.numel() // features not in FEW_ROWS or x.dtype != weight.dtype:
            return F.linear(x, weight, bias)
        x_t = x.reshape(-1, features).t()
        y_t = torch.mm(weight, x_t) if bias is None else torch.addmm(bias.unsqueeze(1), weight, x_t)
        # back to x's leading dims with the out features last, contiguous as F.linear's output is
        return y_t.t().contiguous().view(*x.shape[:-1], weight.shape[0])


def _takes_the_form(module: nn.Module) -> bool:
    """A plain fp32 nn.Linear on the CPU whose forward nothing wraps (no hooks, no forward of accelerate's)."""
    return (type(module) is nn.Linear and module.weight.device.type == "cpu"
            and module.weight.dtype == torch.float32 and "forward" not in vars(module)
            and not module._forward_hooks and not module._forward_pre_hooks)


@contextmanager
def few_row_linears(model: nn.Module) -> Iterator[int]:
    """While inside, `model`'s eligible linears compute 2 to 4 rows as W @ x^T. Yields how many linears took
    that form (0 for a model on the GPU). Not for concurrent use of the same model by another thread: callers
    run it on the model thread (inference/model_thread.py), as everything that computes with the model runs."""
    linears = [m for m in model.modules() if _takes_the_form(m)]
    try:
        for linear in linears:
            linear.forward = _FewRowLinear(linear)  # an instance attribute: nn.Module.__call__ runs it instead
        yield len(linears)
    finally:
        for linear in linears:
            vars(linear).pop("forward", None)
