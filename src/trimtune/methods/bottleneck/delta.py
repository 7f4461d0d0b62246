"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020): a small residual MLP on a sub-layer's output.

    h' = h + up(act(down(h)))        down: d -> d / reduction_factor, up: back to d

The adapter sits on the *output projection* of a sub-layer, as the wrapper's ``transform_output``
stage, i.e. on ``op(x)`` itself — before the model's own dropout, residual add and LayerNorm:

- BERT (post-LN): ``LayerNorm(dropout(adapter(dense(h))) + residual)`` for ``attention.output.dense``
  and the FFN's ``output.dense`` — exactly the paper's placement (after the projection, before the
  skip connection is added and normalised).
- Llama (pre-LN): ``residual + adapter(o_proj(attn))`` and ``residual + adapter(down_proj(mlp))``.
- GPT-2: ``residual + dropout(adapter(c_proj(...)))`` for ``attn.c_proj`` and ``mlp.c_proj``.

Houlsby puts one after the attention block and one after the FFN; Pfeiffer only after the FFN.
``up`` starts at zero and ``down`` small, so the model starts exactly unchanged (near-identity init)
while ``up`` gets gradients from the first step. The adapter is nonlinear, so it cannot be merged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...core.architectures import defaults
from ...core.config import check_choice, check_positive
from ...core.delta import Delta
from ...core.layer_kinds import ConvKind, LayerKind
from ...core.targets import TargetSpec

# Where each placement puts adapters, per architecture (the table in core/architectures.py).
PLACEMENTS: dict[str, dict[str, TargetSpec]] = {"houlsby": defaults("houlsby"), "pfeiffer": defaults("pfeiffer")}
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


@dataclass
class BottleneckConfig:
    """placement: "houlsby" (after attention and FFN output projections) or "pfeiffer" (after the
    FFN only); used when targets is None. reduction_factor: bottleneck size = d / reduction_factor.
    activation: relu, gelu, silu or tanh. init_std: std of the down projection (up starts at zero).
    """

    placement: str = "houlsby"
    reduction_factor: float = 16
    activation: str = "relu"
    init_std: float = 1e-2
    targets: TargetSpec = None
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_choice("placement", self.placement, tuple(PLACEMENTS))
        check_positive("reduction_factor", self.reduction_factor)
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_positive("init_std", self.init_std)
        self.modules_to_save = list(self.modules_to_save or [])

    @property
    def default_targets(self) -> dict[str, TargetSpec]:
        return PLACEMENTS[self.placement]


class BottleneckDelta(Delta):
    mergeable = False

    def __init__(self, kind: LayerKind, weight: torch.Tensor, reduction_factor: float, activation: str, init_std: float):
        super().__init__(kind)
        width, _ = kind.weight_shape(weight)
        bottleneck = max(1, round(width / reduction_factor))
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        self.activation = activation
        self.adapter_down = nn.Linear(width, bottleneck, device=weight.device, dtype=dtype)
        self.adapter_up = nn.Linear(bottleneck, width, device=weight.device, dtype=dtype)
        with torch.no_grad():
            self.adapter_down.weight.normal_(std=init_std)
            self.adapter_down.bias.zero_()
            self.adapter_up.weight.zero_()
            self.adapter_up.bias.zero_()

    def transform_output(self, y):
        h = y.to(self.adapter_down.weight.dtype)
        h = self.adapter_up(ACTIVATIONS[self.activation](self.adapter_down(h)))
        return y + h.to(y.dtype)

    def slice_(self, dim, keep):
        if dim == "in":
            return  # the adapter reads and writes the layer's outputs only
        if dim != "out":
            raise ValueError(f"dim must be 'out' or 'in', got {dim!r}")
        with torch.no_grad():
            down, up = self.adapter_down, self.adapter_up
            down.weight = nn.Parameter(down.weight.index_select(1, keep).contiguous(), down.weight.requires_grad)
            up.weight = nn.Parameter(up.weight.index_select(0, keep).contiguous(), up.weight.requires_grad)
            up.bias = nn.Parameter(up.bias.index_select(0, keep).contiguous(), up.bias.requires_grad)
            down.in_features = up.out_features = len(keep)

    def extra_repr(self):
        return f"{self.adapter_down.in_features} -> {self.adapter_down.out_features} -> {self.adapter_up.out_features}, {self.activation}"


def make_bottleneck(layer, config: BottleneckConfig) -> BottleneckDelta:
    if isinstance(layer.kind, ConvKind):
        raise ValueError(
            f"bottleneck adapters act on the last (feature) dimension; {layer.module_name} ({layer.describe()}) is a "
            "convolution with channels in dim 1. Target Linear or GPT-2 Conv1D output projections"
        )
    return BottleneckDelta(layer.kind, layer.weight, config.reduction_factor, config.activation, config.init_std)
