"""Gradient clipping: by global norm, by value, and adaptive (unit-wise AGC and per tensor).

Adaptive gradient clipping (Brock et al. 2021, NFNets) bounds each gradient relative to the weight
it updates rather than by an absolute number. For a unit ``i`` (one output unit: a row of a Linear
weight, a filter of a conv, a column of GPT-2's (in, out) Conv1D weight):

    if ‖g_i‖ / max(‖w_i‖, eps) > λ:   g_i ← λ · max(‖w_i‖, eps) / ‖g_i‖ · g_i

``eps`` keeps zero-initialised weights (LoRA's B, fresh biases) trainable. Scalars and vectors
(biases, norm gains) are treated as *one unit* for the whole tensor, as in the paper's reference
code (deepmind-research nfnets ``unitwise_norm``) and timm's ``adaptive_clip_grad``. The output
dimension of a layer's native weight comes from its layer kind; any other parameter with two or
more dimensions is taken to have its output units on dim 0 (PyTorch's Linear/Conv convention).

"agc-tensor" is the per-tensor variant: the whole tensor is one unit (clip when ‖g‖ > λ·‖w‖).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.config import check_choice, check_positive
from ..core.layer_kinds import kind_class_for
from ..core.tuned_layer import TunedLayer

CLIP_MODES = ("norm", "value", "agc", "agc-tensor")


@dataclass
class ClipConfig:
    """mode: "norm" (scale all gradients so their global L2 norm is at most ``threshold``),
    "value" (clamp each entry to [-threshold, threshold]), "agc" (unit-wise adaptive, λ =
    ``threshold``), "agc-tensor" (per-tensor adaptive). eps: floor on the weight norm (adaptive
    modes only); the NFNets paper uses 1e-3. Note that a zero-initialised factor (LoRA's B) may
    then only move by λ·eps per unit at first; "norm" clipping has no such start-up cost."""

    mode: str = "norm"
    threshold: float = 1.0
    eps: float = 1e-3

    def __post_init__(self):
        check_choice("ClipConfig.mode", self.mode, CLIP_MODES)
        check_positive("ClipConfig.threshold", self.threshold)
        check_positive("ClipConfig.eps", self.eps)


def as_clip_config(clip) -> ClipConfig | None:
    """None, a ClipConfig, or a bare number meaning "clip the global norm to this"."""
    if clip is None or isinstance(clip, ClipConfig):
        return clip
    if isinstance(clip, (int, float)) and not isinstance(clip, bool):
        return ClipConfig("norm", float(clip))
    raise TypeError(f"clip must be None, a ClipConfig or a number (max gradient norm), got {type(clip).__name__}")


def clip_gradients(params: nn.Module | Iterable[nn.Parameter], config: ClipConfig) -> float:
    """Clip the gradients of a model's (or a list of) parameters in place, as ``config`` says.
    Returns the global L2 norm of the gradients *before* clipping (for logging)."""
    unit_dims = output_unit_dims(params) if isinstance(params, nn.Module) else {}
    params = [p for p in (params.parameters() if isinstance(params, nn.Module) else params) if p.grad is not None]
    if not params:
        return 0.0
    if config.mode == "norm":
        return float(torch.nn.utils.clip_grad_norm_(params, config.threshold))
    total = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
    if config.mode == "value":
        torch.nn.utils.clip_grad_value_(params, config.threshold)
    else:
        unitwise = config.mode == "agc"
        for p in params:
            unit_dim = unit_dims.get(p, 0) if unitwise else None
            adaptive_clip_(p.grad, p.detach(), config.threshold, config.eps, unit_dim)
    return total


@torch.no_grad()
def adaptive_clip_(grad: torch.Tensor, weight: torch.Tensor, threshold: float, eps: float, unit_dim: int | None) -> None:
    """Scale ``grad`` in place so each unit's ‖g‖ ≤ threshold · max(‖w‖, eps). ``unit_dim`` is the
    dimension indexing the units; None (or a tensor with fewer than 2 dims) makes the tensor one unit."""
    max_norm = threshold * unit_norm(weight, unit_dim).clamp_min(eps)
    grad_norm = unit_norm(grad, unit_dim)
    # clamp only guards the division; where it matters grad_norm > max_norm > 0 anyway
    scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp_min(1e-12), torch.ones_like(grad_norm))
    grad.mul_(scale.to(grad.dtype))


def unit_norm(x: torch.Tensor, unit_dim: int | None) -> torch.Tensor:
    """L2 norm per unit along ``unit_dim`` (kept as a broadcastable dim), or of the whole tensor."""
    if unit_dim is None or x.ndim < 2:
        return torch.linalg.vector_norm(x.float())
    reduce = tuple(d for d in range(x.ndim) if d != unit_dim % x.ndim)
    return torch.linalg.vector_norm(x.float(), dim=reduce, keepdim=True)


def output_unit_dims(model: nn.Module) -> dict[nn.Parameter, int]:
    """Where the output units sit in each layer weight whose layout is not (out, in, ...): the
    kind of a wrapped layer, or of a plain supported layer (GPT-2's Conv1D stores (in, out))."""
    dims = {}
    for module in model.modules():
        kind = module.kind if isinstance(module, TunedLayer) else kind_class_for(module)
        weight = getattr(module, "weight", None)
        if kind is not None and isinstance(weight, nn.Parameter):
            dims[weight] = kind.out_dim
    return dims
