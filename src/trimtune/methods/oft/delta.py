"""OFT's delta: a block-diagonal orthogonal rotation R of each target layer's inputs,

    y = op(x · R, W, b)        merged:  W' = W · Rᵀ  (over the flattened (out, in · kh · kw) weight)

R = diag(R_1, …, R_r), each block the Cayley transform of a skew-symmetric matrix whose upper
triangle is one row of ``oft_R`` (peft's tensor, shape (r, b(b−1)/2); one row with block_share).

On a Linear layer the rotation acts on the input rows (``scale_input``), as peft's does: r small
b×b products per token, fewer than rotating the out × in weight and backpropagating through it
whenever b is well below the layer's output width. On a Conv2d layer the rotation acts on the
kernel (``weight_delta``): rotating the input's flattened patches is the same as rotating the
weight's (in · kh · kw) columns. peft 0.21 does that only when merging; its unmerged Conv2d forward
unfolds the input with stride 1, rotates the patches and folds them back, which sums overlapping
patches (a k×k kernel with k > 1 changes the output even at the identity rotation). trimtune's
forward is therefore peft's *merged* model for k > 1, and equal to both for 1×1 kernels.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.config import ConfigError
from ...core.delta import Delta
from ...core.layer_kinds import ConvKind, LinearKind
from .config import OFTConfig
from .rotation import (cayley_exact, cayley_neumann, constrain_, rotate_rows, rotate_weight, skew_from_upper,
                       unrotate_weight)


class OftRotation(Delta):
    """The rotation's parameters and how the orthogonal blocks are built from them (shared by the
    Linear and the Conv2d form); merging rotates the weight, unmerging solves it back."""

    def __init__(self, layer, config: OFTConfig, width: int):
        super().__init__(layer.kind)
        self.block = config.block_size(width, layer.module_name)
        self.blocks = width // self.block
        self.block_share, self.coft, self.eps = config.block_share, config.coft, config.eps
        self.neumann_terms = config.num_cayley_neumann_terms if config.use_cayley_neumann else None
        self.module_dropout = config.module_dropout
        weight = layer.weight
        rows = 1 if config.block_share else self.blocks
        self.oft_R = nn.Parameter(torch.zeros(rows, self.block * (self.block - 1) // 2, dtype=weight.dtype,
                                              device=weight.device))
        if config.init == "random":
            nn.init.normal_(self.oft_R, mean=0.0, std=0.1)
        upper = torch.triu_indices(self.block, self.block, 1, device=weight.device)
        self.register_buffer("upper_rows", upper[0], persistent=False)
        self.register_buffer("upper_cols", upper[1], persistent=False)

    def rotation(self) -> torch.Tensor:
        """The (blocks, b, b) orthogonal blocks R_i (COFT's constraint applied to ``oft_R`` first, in
        place, as peft does at every use; module dropout while training)."""
        if self.coft:
            constrain_(self.oft_R, self.eps)
        skew = skew_from_upper(self.oft_R, self.upper_rows, self.upper_cols, self.block)
        blocks = cayley_exact(skew) if self.neumann_terms is None else cayley_neumann(skew, self.neumann_terms)
        if self.block_share:
            return blocks.expand(self.blocks, -1, -1)
        if self.training and self.module_dropout > 0:
            blocks = self._drop_blocks(blocks)
        return blocks

    def _drop_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """int(p · blocks) blocks, chosen at random, replaced by the identity (peft's MultiplicativeDropoutLayer)."""
        dropped = torch.zeros(self.blocks, device=blocks.device)
        dropped[: int(self.module_dropout * self.blocks)] = 1
        dropped = dropped[torch.randperm(self.blocks)].view(-1, 1, 1).to(blocks.dtype)
        eye = torch.eye(self.block, dtype=blocks.dtype, device=blocks.device)
        return (1 - dropped) * blocks + dropped * eye

    # ---- merging: W' = W Rᵀ, and back by solving (the Neumann series is only nearly orthogonal) ----
    def merge_into(self, weight, bias, mask):
        weight.copy_(rotate_weight(weight, self._merge_rotation(weight)))

    def unmerge_from(self, weight, bias, mask):
        weight.copy_(unrotate_weight(weight, self._merge_rotation(weight)))

    def _merge_rotation(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.rotation().to(weight.dtype)

    def delta_weight(self):
        raise NotImplementedError("OFT rotates the weight (W Rᵀ); it has no additive change")

    def peft_key(self, key):
        return "oft_R.weight" if key == "oft_R" else key

    def extra_repr(self):
        share = ", block_share" if self.block_share else ""
        form = "exact Cayley" if self.neumann_terms is None else f"Neumann {self.neumann_terms} terms"
        return f"blocks={self.blocks}, block_size={self.block}{share}, {form}{', coft' if self.coft else ''}"


class OftLinearDelta(OftRotation):
    def scale_input(self, x):
        return rotate_rows(x, self.rotation().to(x.dtype))

    def merge_into(self, weight, bias, mask):
        if mask is not None:  # (x R)(W ⊙ M)ᵀ is not (W Rᵀ) ⊙ M: the rotation spreads the zeros
            raise ValueError("OFT rotates the inputs of a pruned layer, which does not keep its weight's zeros; "
                             "merge with keep_sparsity=False (the mask is folded in first, the output kept)")
        super().merge_into(weight, bias, mask)


class OftConvDelta(OftRotation):
    def __init__(self, layer, config: OFTConfig, width: int):
        super().__init__(layer, config, width)
        object.__setattr__(self, "host", layer)  # the wrapper whose weight it rotates (not a submodule)

    def weight_delta(self):
        weight = self.host.weight
        return rotate_weight(weight, self.rotation().to(weight.dtype)) - weight


def rotated_width(layer, method: str = "OFT") -> int:
    """The width a rotation acts on: a Linear layer's inputs, a Conv2d's flattened patches (in · kh · kw).
    Refuses, naming it, a layer the ``method`` does not serve (BOFT shares this)."""
    kind, weight = layer.kind, layer.weight
    if not (type(kind) is LinearKind or (isinstance(kind, ConvKind) and weight.dim() == 4)):
        raise ValueError(f"{method} supports Linear and Conv2d layers; {layer.module_name} is {layer.describe()} "
                         "(choose targets among the linear or 2-d convolution layers)")
    if not weight.is_floating_point():
        raise ValueError(f"{method} rotates the weight when merging, but {layer.module_name} has a {weight.dtype} "
                         "(e.g. 4-bit) weight; apply it to a floating-point base")
    if type(kind) is LinearKind:
        return weight.shape[1]
    conv = kind.shell
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.groups != 1 or max(conv.dilation) > 1:
        raise ConfigError(f"{method} on {layer.module_name} ({layer.describe()}): peft 0.21's {method} takes square "
                          f"kernels, groups 1 and dilation 1; this one has kernel {tuple(conv.kernel_size)}, groups "
                          f"{conv.groups}, dilation {tuple(conv.dilation)}")
    return weight[0].numel()


def make_oft(layer, config: OFTConfig) -> OftRotation:
    width = rotated_width(layer)
    cls = OftLinearDelta if type(layer.kind) is LinearKind else OftConvDelta
    return cls(layer, config, width)
