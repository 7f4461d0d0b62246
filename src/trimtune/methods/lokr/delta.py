"""LoKr (Edalati et al., KronA, 2022; the LyCORIS repository): a change that is a Kronecker product,

    ΔW = s · W1 ⊗ W2,        s = alpha / r,

W1 (out_l, in_m) small, W2 (out_k, in_n, *kernel) the larger block, each either a full matrix or
a rank-r product (``layout.py`` decides, as peft does); with ``use_effective_conv2d`` a low-rank W2 of
a k×k kernel is a Tucker product. A Kronecker product keeps the rank of its factors multiplying,
so a few thousand parameters give a full-rank change. Tensors and shapes are peft's (``lokr_w1``,
``lokr_w1_a`` ... ``lokr_t2``), so files convert by name alone.

The change is built once per forward and added to the weight (``loha/lycoris.py``'s ``LycorisDelta``,
which LoKr shares with LoHa).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...core.config import ConfigError
from ..loha.lycoris import (LycorisConfig, LycorisDelta, check_bool, check_target, kaiming, rescaled, tucker_weight,
                            uses_tucker, zeros)
from .layout import KronLayout


@dataclass
class LoKrConfig(LycorisConfig):
    """The LyCORIS fields (``loha/lycoris.py``: r, alpha, rank_dropout, module_dropout,
    use_effective_conv2d, targets, modules_to_save, rank_pattern, alpha_pattern) and:

    decompose_both: W1 too becomes a rank-r product when r is below half its larger side.
    decompose_factor: split each width as (factor, width / factor); -1: the two factors closest to
    its square root. A factor must divide every target's input and output widths.
    rank_dropout_scale: rescale the kept rows by the kept share under rank_dropout.
    init: "default" (W1 starts at zero: the model starts unchanged), "lycoris" (W2 starts at zero,
    as the LyCORIS repository) or "random". Linear and Conv2d layers.
    """

    peft_type: ClassVar[str] = "LOKR"
    inits = ("default", "lycoris", "random")
    peft_fields = LycorisConfig.peft_fields | {"decompose_both", "decompose_factor", "rank_dropout_scale"}

    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_bool("decompose_both", self.decompose_both)
        check_bool("rank_dropout_scale", self.rank_dropout_scale)
        factor = self.decompose_factor
        if isinstance(factor, bool) or not isinstance(factor, int) or not (factor == -1 or factor >= 1):
            raise ConfigError(f"decompose_factor must be -1 (the factors closest to each width's square root) or an "
                              f"integer >= 1 dividing the targets' widths, got {factor!r}")

    def to_peft_dict(self, layers: dict) -> dict:
        return {**super().to_peft_dict(layers), "decompose_both": self.decompose_both,
                "decompose_factor": self.decompose_factor, "rank_dropout_scale": self.rank_dropout_scale}

    @classmethod
    def from_peft_dict(cls, d: dict) -> LoKrConfig:
        return cls(**cls.fields_from_peft(d), decompose_both=bool(d.get("decompose_both", False)),
                   decompose_factor=d.get("decompose_factor", -1), rank_dropout_scale=bool(d.get("rank_dropout_scale", False)))


class LoKrDelta(LycorisDelta):
    def __init__(self, layer, config: LoKrConfig):
        super().__init__(layer, config)
        weight, r = layer.weight, config.r
        self.layout = layout = KronLayout.of(self.base_shape, r, config.decompose_factor, config.decompose_both,
                                             uses_tucker(layer, config), layer.module_name)
        self.rank_dropout_scale = config.rank_dropout_scale
        # "default": W1 zero; "lycoris": W2 zero (its second factor when low-rank); "random": neither
        first = zeros if config.init == "default" else kaiming
        second = zeros if config.init == "lycoris" else kaiming
        out_l, in_m = layout.w1
        if layout.full_w1:
            self.lokr_w1 = first((out_l, in_m), weight)
        else:
            self.lokr_w1_a, self.lokr_w1_b = first((out_l, r), weight), kaiming((r, in_m), weight)
        out_k, in_n = layout.w2[:2]
        if layout.full_w2:
            self.lokr_w2 = second(layout.w2, weight)
        elif layout.tucker:
            self.lokr_w2_a, self.lokr_w2_b = kaiming((r, out_k), weight), second((r, in_n), weight)
            self.lokr_t2 = kaiming((r, r, *layout.kernel), weight)
        else:
            self.lokr_w2_a, self.lokr_w2_b = kaiming((out_k, r), weight), second((r, layout.w2_columns), weight)

    def _w1(self) -> torch.Tensor:
        return self.lokr_w1 if self.layout.full_w1 else self.lokr_w1_a @ self.lokr_w1_b

    def _w2(self) -> torch.Tensor:
        if self.layout.full_w2:
            return self.lokr_w2
        if self.layout.tucker:
            return tucker_weight(self.lokr_t2, self.lokr_w2_a, self.lokr_w2_b)
        return self.lokr_w2_a @ self.lokr_w2_b  # a kernel flattened to (out_k, in_n·kh·kw)

    def dense_change(self):
        w1, w2 = self._w1() * self.scale, self._w2()  # the scale on the small factor: no full-size pass for it
        if w2.dim() == 4:  # a kernel: W1's entries scale whole (kh, kw) blocks
            w1 = w1[:, :, None, None]
        # torch.kron of (out_l, in_m) and (out_k, in_n·k·k) lays the blocks out as (out, in, kh, kw) flattened
        return torch.kron(w1, w2).reshape(self.base_shape)

    def rank_dropout_mask(self, rows, dtype):
        keep = (torch.rand(rows) > self.rank_dropout).float()  # peft draws LoKr's in float32
        return (rescaled(keep) if self.rank_dropout_scale else keep).to(dtype)

    def extra_repr(self):
        return f"{super().extra_repr()}, w1={self.layout.w1}, w2={self.layout.w2}"


def make_lokr(layer, config: LoKrConfig) -> LoKrDelta:
    check_target(layer, "LoKr")
    return LoKrDelta(layer, config.for_layer(layer.module_name))
