"""SHiRA (Bhardwaj et al., "Sparse high rank adapters", 2024): train a fixed sparse set of a layer's
weight entries, r · (out + in) of them (as many as LoRA of rank r), chosen at random with a seed,

    W' = W + ΔW,        ΔW[rows[k], cols[k]] = values[k],

so the change is sparse but of high rank. Tensors are peft's: ``shira_weight`` (the values) and
``shira_indices`` ((2, count) int32 rows and columns, a buffer saved with the adapter: a loaded file's
entries win over the seed, as in peft).

The change is scattered into a dense out × in matrix and joins the weight before the op (the
``weight_delta`` stage), so a step runs one matmul over the tokens, and a pruned layer's mask covers
it (the sparse merge is exact). Merging adds it, unmerging subtracts it.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.config import ConfigError
from ...core.delta import Delta
from ...core.layer_kinds import LinearKind
from .config import ShiraConfig
from .mask import random_entries


class ShiraDelta(Delta):
    """The trained values ``shira_weight`` (count,) at the entries ``shira_indices`` (2, count) of one layer."""

    def __init__(self, layer, r: int, seed: int | None, init: str):
        super().__init__(layer.kind)
        self.out_features, self.in_features = layer.kind.weight_shape(layer.weight)
        count = r * (self.out_features + self.in_features)
        weight = layer.weight
        indices = random_entries(self.out_features, self.in_features, count, seed).to(weight.device)
        self.register_buffer("shira_indices", indices)
        values = torch.zeros(count, device=weight.device, dtype=weight.dtype)
        self.shira_weight = nn.Parameter(values if init == "default" else values.normal_())

    def weight_delta(self):
        rows, cols = self.shira_indices.long()
        flat = rows * self.in_features + cols
        dense = self.shira_weight.new_zeros(self.out_features * self.in_features)
        # index_put: its backward gathers the values' gradient from the dense one
        return dense.index_put((flat,), self.shira_weight).view(self.out_features, self.in_features)

    def delta_weight(self):
        return self.weight_delta()

    def extra_repr(self):
        return f"{self.shira_weight.numel()} of {self.out_features * self.in_features} entries"


def make_shira(layer, config: ShiraConfig) -> ShiraDelta:
    if type(layer.kind) is not LinearKind:
        raise ValueError(f"SHiRA supports Linear layers; {layer.module_name} is {layer.describe()} "
                         "(choose targets among the linear layers)")
    if not layer.weight.is_floating_point():
        raise ValueError(f"SHiRA adds its change to the weight, but {layer.module_name} has a {layer.weight.dtype} "
                         "(e.g. 4-bit) weight; apply it to a floating-point base")
    out_features, in_features = layer.kind.weight_shape(layer.weight)
    if config.r * (out_features + in_features) > out_features * in_features:
        largest = out_features * in_features // (out_features + in_features)
        raise ConfigError(f"r={config.r} asks for r · (out + in) = {config.r * (out_features + in_features)} trained "
                          f"entries of {layer.module_name}, which has only {out_features * in_features} "
                          f"({out_features} x {in_features}); r must be at most {largest} for it")
    return ShiraDelta(layer, config.r, config.random_seed, config.init)
