"""BOFT's delta: the butterfly rotation B of each target's inputs and a scale s per output unit,

    y = s ⊙ op(x · B, W) + b        merged:  W' = s ⊙ (W · Bᵀ)   (over the flattened (out, in · kh · kw) weight)

``boft_R`` (N, D, b, b) holds the free matrices of the N factors' D blocks and ``boft_s`` the scale
(peft's tensors and shapes: (out, 1) on a Linear layer, (1, out) on a Conv2d). On a Linear layer the
rotation acts on the input rows and the scale on the output (``scale_input``, ``add_output``); on a
Conv2d on the kernel (``weight_delta``), as peft's Conv2d does. Unmerging divides by s and applies B
(Bᵀ's inverse: the exact Cayley transform is orthogonal), as peft does.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.delta import Delta
from ...core.layer_kinds import ConvKind, LinearKind
from ..oft.delta import rotated_width
from .butterfly import apply_butterfly, cayley, factor_permutations
from .config import BOFTConfig


class BoftRotation(Delta):
    def __init__(self, layer, config: BOFTConfig, width: int):
        super().__init__(layer.kind)
        blocks, size = config.layout(width, layer.module_name)
        factors, weight = config.boft_n_butterfly_factor, layer.weight
        self.factors, self.blocks, self.block, self.dropout = factors, blocks, size, config.boft_dropout
        out_features = weight.shape[0]
        like = dict(dtype=weight.dtype, device=weight.device)
        self.boft_R = nn.Parameter(torch.zeros(factors, blocks, size, size, **like))
        self.boft_s = nn.Parameter(torch.ones((1, out_features) if isinstance(layer.kind, ConvKind) else (out_features, 1),
                                              **like))
        if config.init == "random":
            nn.init.normal_(self.boft_R, mean=0.0, std=0.1)
            nn.init.normal_(self.boft_s, mean=1.0, std=0.1)
        permutations = factor_permutations(width, factors, blocks, size)
        # index buffers (not saved): they follow the layer to its device
        for i, p in enumerate(permutations):
            if p is not None:
                self.register_buffer(f"perm_{i}", p.to(weight.device), persistent=False)
                self.register_buffer(f"inverse_{i}", torch.argsort(p).to(weight.device), persistent=False)

    def _permutations(self):
        perms = [getattr(self, f"perm_{i}", None) for i in range(self.factors)]
        return perms, [getattr(self, f"inverse_{i}", None) for i in range(self.factors)]

    def factor_blocks(self) -> torch.Tensor:
        """The (N, D, b, b) orthogonal blocks; block dropout while training."""
        blocks = cayley(self.boft_R.flatten(0, 1)).view_as(self.boft_R)
        if self.training and self.dropout > 0:
            blocks = self._drop_blocks(blocks)
        return blocks

    def _drop_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """peft's draws: one factor at random, in it int(p · D) random blocks replaced by the identity."""
        factor = torch.randint(0, self.factors, (1,)).item()
        chosen = torch.zeros(self.blocks, device=blocks.device)
        chosen[: int(self.dropout * self.blocks)] = 1
        dropped = torch.zeros(self.factors, self.blocks, 1, 1, device=blocks.device)
        dropped[factor] = chosen[torch.randperm(self.blocks)].view(-1, 1, 1)
        eye = torch.eye(self.block, dtype=blocks.dtype, device=blocks.device)
        return (1 - dropped) * blocks + dropped * eye

    def rotate(self, x: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        """x (..., width) times B (or Bᵀ)."""
        return apply_butterfly(x, self.factor_blocks().to(x.dtype), *self._permutations(), transposed=transposed)

    def _scale_rows(self) -> torch.Tensor:
        """s as a column (out, 1), whatever peft's shape."""
        return self.boft_s.reshape(-1, 1)

    def rotated_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """s ⊙ (W Bᵀ), W flattened to (out, width) and back."""
        flat = weight.reshape(weight.shape[0], -1)
        return (self.rotate(flat, transposed=True) * self._scale_rows().to(weight.dtype)).reshape(weight.shape)

    # ---- merging ----
    def merge_into(self, weight, bias, mask):
        with torch.no_grad():
            weight.copy_(self.rotated_weight(weight))

    def unmerge_from(self, weight, bias, mask):
        with torch.no_grad():
            flat = weight.reshape(weight.shape[0], -1) / self._scale_rows().to(weight.dtype)
            weight.copy_(self.rotate(flat).reshape(weight.shape))

    def delta_weight(self):
        raise NotImplementedError("BOFT rotates and scales the weight; it has no additive change")

    def extra_repr(self):
        return f"factors={self.factors}, blocks={self.blocks}, block_size={self.block}"


class BoftLinearDelta(BoftRotation):
    def __init__(self, layer, config, width):
        super().__init__(layer, config, width)
        object.__setattr__(self, "host", layer)  # the wrapper whose bias the scale leaves out (not a submodule)

    def scale_input(self, x):
        return self.rotate(x)

    def add_output(self, y, x):
        # s ⊙ (op(xB, W, b) − b) + b: the bias is not scaled (peft's order)
        bias, scale = self.host.bias, self.boft_s.reshape(-1).to(y.dtype)
        return y * scale if bias is None else (y - bias) * scale + bias

    def merge_into(self, weight, bias, mask):
        if mask is not None:  # (x B)(W ⊙ M)ᵀ is not a masked weight: the rotation spreads the zeros
            raise ValueError("BOFT rotates the inputs of a pruned layer, which does not keep its weight's zeros; "
                             "merge with keep_sparsity=False (the mask is folded in first, the output kept)")
        super().merge_into(weight, bias, mask)


class BoftConvDelta(BoftRotation):
    def __init__(self, layer, config, width):
        super().__init__(layer, config, width)
        object.__setattr__(self, "host", layer)  # the wrapper whose weight it rotates (not a submodule)

    def weight_delta(self):
        weight = self.host.weight
        return self.rotated_weight(weight) - weight


def make_boft(layer, config: BOFTConfig) -> BoftRotation:
    width = rotated_width(layer, "BOFT")
    cls = BoftLinearDelta if type(layer.kind) is LinearKind else BoftConvDelta
    return cls(layer, config, width)
