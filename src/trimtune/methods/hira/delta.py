"""HiRA (Huang et al., "HiRA: Parameter-efficient Hadamard high-rank adaptation for large language
models", ICLR 2025): the change is the frozen weight times a low-rank product, element by element,

    ΔW = W0 ⊙ (B A),        A: (r, in), B: (out, r),

so its rank is not bounded by r (rank(W0 ⊙ BA) ≤ rank(W0) · r). No scale: B starts at zero, so the
model starts unchanged. Tensors and shapes are peft's (``hira_A``, ``hira_B``), so files convert by name.

Without dropout the change joins the weight before the op (the ``weight_delta`` stage): one matmul over
the tokens, where peft runs two (``W x`` and ``ΔW x``), and a pruned layer's mask covers the change.
With dropout, as in peft, only the adapter's branch sees the dropped input, so the change is then a
second matmul added to the output (``add_output``). The delta reads W0 live from its layer.

Merging adds ΔW to the weight (under the mask, as the forward); unmerging puts back the weight as it
was before, kept at merge time (as peft does): ``W / (1 + B A)`` would lose the entries where 1 + BA is 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...core.delta import Delta
from ...core.layer_kinds import GPT2Conv1DKind, LinearKind
from .config import HiraConfig


def initial_factors(r: int, out_features: int, in_features: int, init: str, like: torch.Tensor):
    """(A, B) as peft starts them: A Kaiming-uniform ("default") or normal with std 1/r ("gaussian"), B zero;
    "random": both standard normal."""
    options = dict(device=like.device, dtype=like.dtype)
    a, b = torch.randn(r, in_features, **options), torch.randn(out_features, r, **options)
    if init == "default":
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    elif init == "gaussian":
        nn.init.normal_(a, std=1 / r)
    if init != "random":
        b.zero_()
    return nn.Parameter(a), nn.Parameter(b)


class HiraDelta(Delta):
    """A (r, in) and B (out, r) of one layer; ΔW = W0 ⊙ (B A), W0 read from the layer at each forward."""

    def __init__(self, layer, r: int, dropout: float, init: str):
        super().__init__(layer.kind)
        object.__setattr__(self, "layer", layer)  # the wrapper holding W0: read live, not a submodule
        out_features, in_features = layer.kind.weight_shape(layer.weight)
        self.dropout = dropout
        self.hira_A, self.hira_B = initial_factors(r, out_features, in_features, init, layer.weight)
        self.weight_before_merge: torch.Tensor | None = None

    def stages(self):
        return ("add_output",) if self.dropout else ("weight_delta",)

    def _change(self) -> torch.Tensor:
        """W0 ⊙ (B A) in canonical (out, in) layout. W0 is the masked weight the base branch runs, so the
        change is zero on pruned entries in both stages (and a sparse merge drops nothing)."""
        mask = self.layer.weight_mask
        weight = self.layer.weight if mask is None else self.layer.weight * mask
        return self.kind.to_canonical(weight).to(self.hira_B.dtype) * (self.hira_B @ self.hira_A)

    def weight_delta(self):
        return self.kind.from_canonical(self._change())

    def add_output(self, y, x):
        dropped = F.dropout(x.to(self.hira_A.dtype), self.dropout, self.training)
        return (y + F.linear(dropped, self._change())).to(y.dtype)

    # ---- merging: add ΔW (masked as the forward); unmerge restores the weight kept at merge time ----
    def delta_weight(self):
        return self.weight_delta()

    def merge_into(self, weight, bias, mask):
        self.weight_before_merge = weight.detach().clone()
        super().merge_into(weight, bias, mask)

    def unmerge_from(self, weight, bias, mask):
        if self.weight_before_merge is None:
            raise ValueError("this HiRA adapter was not merged here, so there is no weight to restore")
        weight.copy_(self.weight_before_merge)
        self.weight_before_merge = None

    def extra_repr(self):
        return f"r={self.hira_A.shape[0]}, dropout={self.dropout:g}"


def make_hira(layer, config: HiraConfig) -> HiraDelta:
    if type(layer.kind) not in (LinearKind, GPT2Conv1DKind):
        raise ValueError(f"HiRA supports Linear and GPT-2 Conv1D layers; {layer.module_name} is {layer.describe()} "
                         "(choose targets among the linear layers)")
    if not layer.weight.is_floating_point():
        raise ValueError(f"HiRA multiplies the base weight element-wise, but {layer.module_name} has a "
                         f"{layer.weight.dtype} (e.g. 4-bit) weight; apply it to a floating-point base")
    return HiraDelta(layer, config.r, config.dropout, config.init)
