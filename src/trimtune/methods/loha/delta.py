"""LoHa (Hyeon-Woo et al., FedPara, 2022; the LyCORIS repository): a change that is the Hadamard
(element-wise) product of two low-rank matrices,

    ΔW = s · (W1a W1b) ⊙ (W2a W2b),        s = alpha / r,

so rank r per factor gives a change of rank up to r², for 2·r·(out + in) parameters. With
``use_effective_conv2d`` a k×k convolution's two matrices are each a Tucker product of a core
(r, r, k, k) with factors (r, out) and (r, in); otherwise a convolution's are (out, r) @ (r, in·k·k).
Tensors and shapes are peft's (``hada_w1_a`` ... ``hada_t2``), so files convert by name alone.

The change is built once per forward and added to the weight (``lycoris.LycorisDelta``). Its
backward rebuilds the two products instead of keeping them from the forward, so training holds the
factors, not two more out × in matrices per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...core.delta import sliced
from .lycoris import LycorisConfig, LycorisDelta, check_target, kaiming, rescaled, tucker_weight, uses_tucker, zeros


@dataclass
class LoHaConfig(LycorisConfig):
    """LoHa's fields are the LyCORIS ones (``lycoris.LycorisConfig``): r, alpha, rank_dropout,
    module_dropout, use_effective_conv2d, targets, init ("default": W2b starts at zero, so the model
    starts unchanged; "random"), modules_to_save, rank_pattern, alpha_pattern. Linear and Conv2d layers.
    """

    peft_type: ClassVar[str] = "LOHA"

    @classmethod
    def from_peft_dict(cls, d: dict) -> LoHaConfig:
        return cls(**cls.fields_from_peft(d))


class HadamardOfProducts(torch.autograd.Function):
    """s · (A1 B1) ⊙ (A2 B2), saving only the four factors for backward."""

    # In place on the fresh products: two out × in buffers per call instead of four.
    @staticmethod
    def forward(ctx, a1, b1, a2, b2, scale: float):
        ctx.save_for_backward(a1, b1, a2, b2)
        ctx.scale = scale
        return (a1 @ b1).mul_(a2 @ b2).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        a1, b1, a2, b2 = ctx.saved_tensors
        grad = grad * ctx.scale
        grad_first = (a2 @ b2).mul_(grad)  # the gradient reaching A1 B1: the other product is its factor
        grad_second = (a1 @ b1).mul_(grad)
        return grad_first @ b1.T, a1.T @ grad_first, grad_second @ b2.T, a2.T @ grad_second, None


class LoHaDelta(LycorisDelta):
    def __init__(self, layer, config: LoHaConfig):
        super().__init__(layer, config)
        weight, r = layer.weight, config.r
        out_features, in_features = self.base_shape[:2]
        self.tucker = uses_tucker(layer, config)
        # "default": W2b zero, so ΔW = 0 (as peft; the first step moves W2b, the others follow from there)
        last = zeros if config.init == "default" else kaiming
        if self.tucker:  # factors (r, out) / (r, in) around a core per product
            kernel = self.base_shape[2:]
            self.hada_w1_a, self.hada_w1_b = kaiming((r, out_features), weight), kaiming((r, in_features), weight)
            self.hada_w2_a, self.hada_w2_b = kaiming((r, out_features), weight), last((r, in_features), weight)
            self.hada_t1, self.hada_t2 = kaiming((r, r, *kernel), weight), kaiming((r, r, *kernel), weight)
        else:  # a convolution flattened to (out, in·kh·kw)
            columns = weight[0].numel()
            self.hada_w1_a, self.hada_w1_b = kaiming((out_features, r), weight), kaiming((r, columns), weight)
            self.hada_w2_a, self.hada_w2_b = kaiming((out_features, r), weight), last((r, columns), weight)

    def dense_change(self):
        if self.tucker:
            first = tucker_weight(self.hada_t1, self.hada_w1_a, self.hada_w1_b)
            second = tucker_weight(self.hada_t2, self.hada_w2_a, self.hada_w2_b)
            return first * second * self.scale
        change = HadamardOfProducts.apply(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scale)
        return change.reshape(self.base_shape)

    def rank_dropout_mask(self, rows, dtype):
        return rescaled(super().rank_dropout_mask(rows, dtype))  # LoHa always does (peft, the LyCORIS repository)

    # ---- structured pruning: row i of ΔW reads only row i of the "a" factors and column j only column j
    # of the "b" factors (in the Hadamard and the Tucker form alike), so slicing them is exact ----
    def slice_(self, dim, keep):
        if dim == "out":
            axis = 1 if self.tucker else 0  # Tucker factors are (r, out)
            for name in ("hada_w1_a", "hada_w2_a"):
                setattr(self, name, sliced(getattr(self, name), axis, keep))
            self.base_shape = (len(keep), *self.base_shape[1:])
        elif dim == "in":
            columns = keep if self.tucker else self._flat_columns(keep)
            for name in ("hada_w1_b", "hada_w2_b"):
                setattr(self, name, sliced(getattr(self, name), 1, columns))
            self.base_shape = (self.base_shape[0], len(keep), *self.base_shape[2:])
        else:
            raise ValueError(f"dim must be 'out' or 'in', got {dim!r}")

    def _flat_columns(self, inputs: torch.Tensor) -> torch.Tensor:
        """The flattened (in · kh · kw) columns of input units ``inputs``: each keeps its kernel block."""
        block = math.prod(self.base_shape[2:])
        return (inputs[:, None] * block + torch.arange(block, device=inputs.device)).flatten()


def make_loha(layer, config: LoHaConfig) -> LoHaDelta:
    check_target(layer, "LoHa")
    return LoHaDelta(layer, config.for_layer(layer.module_name))
