"""The low-rank branch every LoRA-family delta adds to a layer's output: ``y + scale · B(A(dropout(x)))``.

Each layer kind says how a factor pair runs with its own op (``project_in`` / ``add_project_out``:
a linear map, an embedding lookup, a convolution); linear layouts take the fused autograd Function
in ``dropped_low_rank.py`` when training, which saves ``x`` rather than ``dropout(x)`` and computes
the skinny gradients in their fast layouts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .delta import sliced
from .dropped_low_rank import dropped_low_rank
from .layer_kinds import LayerKind


def add_low_rank(kind: LayerKind, y, x, a, b, scale: float, dropout: float = 0.0):
    """``y + scale · B(A(dropout(x)))``; ``dropout`` > 0 only in training."""
    training = dropout > 0 or (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or x.requires_grad))
    # same dtypes only: under autocast the base output is already in the low dtype, so the composed path runs
    if kind.linear_layout and training and y.dtype == x.dtype == a.dtype == b.dtype:
        return dropped_low_rank(y, x, a, b, scale, dropout)
    return composed_low_rank(kind, y, x, a, b, scale, dropout)


def slice_factors(delta, dim: str, keep: torch.Tensor) -> None:
    """Structured pruning of a factor pair: A (``lora_A``) reads the input units, B (``lora_B``) writes
    the output units (canonical layout), so removing units slices one of them."""
    with torch.no_grad():
        if dim == "out":
            delta.lora_B = sliced(delta.lora_B, 0, keep)
        elif dim == "in":
            delta.lora_A = sliced(delta.lora_A, 1, keep)
        else:
            raise ValueError(f"dim must be 'out' or 'in', got {dim!r}")


def composed_low_rank(kind: LayerKind, y, x, a, b, scale: float, dropout: float = 0.0):
    """The same branch from the kind's own ops (any layer kind, any dtype mix)."""
    if dropout > 0 and x.is_floating_point():
        x = F.dropout(x, dropout, training=True)
    return kind.add_project_out(y, kind.project_in(x, a), b, scale)
