"""HRA (Yuan et al., "Bridging the gap between low-rank and orthogonal adaptation via Householder
reflection adaptation", 2024): the frozen weight times an orthogonal matrix built from r trained vectors,

    W' = W H,        H = H(u_1) H(u_2) … H(u_r),        H(u) = I - 2 u uᵀ / uᵀu,

so ``y = W (H x) + b``: H acts on the layer's inputs. The delta applies it there (the ``scale_input``
stage) in compact form (``reflections.py``), two thin matmuls over the tokens; peft instead builds H
(in × in) and ``W H`` every forward. The vectors are peft's ``hra_u`` (in, r), so files convert by name.

Merging multiplies the weight by H and unmerging by Hᵀ (H is orthogonal), as peft does. Into a pruned
layer (a kept mask) the merge is refused: the forward rotates the masked weight, ``(W ⊙ M) H``, which
the mask cannot keep once H is folded in; ``merge(keep_sparsity=False)`` folds the mask in first.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ...core.config import ConfigError
from ...core.delta import Delta
from ...core.layer_kinds import LinearKind
from .config import HRAConfig
from .reflections import reflection_factors, reflection_matrix


def initial_vectors(in_features: int, r: int, init: str, like: torch.Tensor) -> torch.Tensor:
    """peft's start: Kaiming-uniform vectors; for "default" with an even r, r/2 of them each taken twice,
    so every pair of reflections cancels and H starts as the identity."""
    dtype = like.dtype if like.is_floating_point() else torch.float32  # a 4-bit base's packed bytes are not a dtype for u
    paired = init == "default" and r % 2 == 0
    vectors = torch.empty(in_features, r // 2 if paired else r, device=like.device, dtype=dtype)
    nn.init.kaiming_uniform_(vectors, a=math.sqrt(5))
    return vectors.repeat_interleave(2, dim=1) if paired else vectors


class HRADelta(Delta):
    """The r reflection vectors ``hra_u`` (in, r) of one layer."""

    def __init__(self, layer, r: int, apply_gs: bool, init: str):
        super().__init__(layer.kind)
        _, in_features = layer.kind.weight_shape(layer.weight)
        self.apply_gs = apply_gs
        self.hra_u = nn.Parameter(initial_vectors(in_features, r, init, layer.weight))

    def scale_input(self, x):
        left, right = reflection_factors(self.hra_u, self.apply_gs)
        inputs = x.to(left.dtype)
        # row vectors: x Hᵀ = x - (x Rᵀ) Lᵀ
        return (inputs - F.linear(F.linear(inputs, right), left)).to(x.dtype)

    # ---- merging: a product with the weight, not a sum ----
    def merge_into(self, weight, bias, mask):
        if mask is not None:
            raise ValueError("HRA rotates the layer's inputs, so the forward computes (W ⊙ M) H, which the mask cannot "
                             "keep once H is folded into W; merge with keep_sparsity=False (the mask is folded in "
                             "first) or remove the mask")
        self._multiply(weight, reflection_matrix(self.hra_u, self.apply_gs))

    def unmerge_from(self, weight, bias, mask):
        self._multiply(weight, reflection_matrix(self.hra_u, self.apply_gs).T)  # H is orthogonal: Hᵀ undoes it

    @staticmethod
    def _multiply(weight: torch.Tensor, rotation: torch.Tensor) -> None:
        weight.copy_((weight.to(rotation.dtype) @ rotation).to(weight.dtype))

    def delta_weight(self):
        raise NotImplementedError("HRA multiplies the weight by an orthogonal matrix; it has no additive dense form (use merge)")

    def extra_repr(self):
        return f"r={self.hra_u.shape[1]}, in={self.hra_u.shape[0]}{', Gram-Schmidt' if self.apply_gs else ''}"


def make_hra(layer, config: HRAConfig) -> HRADelta:
    if type(layer.kind) is not LinearKind:
        raise ValueError(f"HRA supports Linear layers; {layer.module_name} is {layer.describe()} "
                         "(choose targets among the linear layers)")
    _, in_features = layer.kind.weight_shape(layer.weight)
    if config.r > in_features:
        raise ConfigError(f"r={config.r} is larger than the input width of {layer.module_name} ({in_features}); HRA "
                          f"reflects a layer's inputs, so r must be at most the narrowest target's input width")
    if config.init == "default" and config.r % 2:
        warnings.warn(f"HRA with an odd r ({config.r}) cannot pair its reflections: the adapter starts random, not as "
                      "the identity (as in peft); choose an even r to start from the base model", stacklevel=2)
    return HRADelta(layer, config.r, config.apply_gs, config.init)
