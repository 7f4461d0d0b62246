"""DoRA (Liu et al., 2024): LoRA split into a direction and a trained magnitude per output unit.

    W' = m ⊙ (W + s·BA) / ‖W + s·BA‖        (norms over the input dim, one per output unit)

As in peft (``LoraConfig(use_dora=True)``) and the paper (§4.3), the norm is treated as a constant
(no gradient), and the forward never builds W': it rescales the base output that is already there,

    y = b + W x + (m/‖·‖ - 1) · W x + m/‖·‖ · s · B A x,

where ``W x`` is the layer's output minus its bias. With dropout on (training), peft applies the
rescaling to ``W dropout(x)`` computed again, so ``y = b + W x + (m/‖·‖ - 1) · W x_d + m/‖·‖ · s · B A x_d``;
we do the same so the losses match. Files are peft's LoRA files with ``use_dora: true`` and the
magnitude under ``lora_magnitude_vector`` (no ``.weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...core.config import ConfigError
from ...core.layer_kinds import EmbeddingKind
from ..lora.delta import LoraConfig, LoraDelta


@dataclass
class DoraConfig(LoraConfig):
    """LoraConfig's fields (r, alpha, dropout, targets, use_rslora, init, bias, modules_to_save,
    rank_pattern, alpha_pattern); DoRA adds a trained magnitude per output unit of each target.
    Linear, GPT-2 Conv1D and Conv layers (not embeddings); follow_mask is not available (DoRA rescales whole rows)."""

    def __post_init__(self):
        if self.follow_mask:
            raise ConfigError("follow_mask=True is not available with DoRA, which rescales whole output rows; "
                              "use follow_mask=False")
        super().__post_init__()
        if self.init not in ("default", "gaussian"):  # PiSSA/OLoRA rewrite the base: not done for DoRA here
            raise ConfigError(f"init must be 'default' or 'gaussian' with DoRA, got {self.init!r}")

    def to_peft_dict(self, layers: dict) -> dict:
        return {**super().to_peft_dict(layers), "use_dora": True}

    @classmethod
    def from_peft_dict(cls, d: dict) -> DoraConfig:
        if d.get("use_dora") is not True:
            raise ConfigError(f"a DoRA adapter_config.json has use_dora=true, got use_dora={d.get('use_dora')!r}")
        return super().from_peft_dict({k: v for k, v in d.items() if k != "use_dora"})


class DoraDelta(LoraDelta):
    """LoRA's factors plus ``lora_magnitude_vector`` (one entry per output unit).

    It needs the base weight (for the norm) and bias (to take it out of the output), so it keeps a
    reference to its layer (``host``, not a submodule) and reads them live, so the norm is always
    that of the weight the layer runs with (mask included; another adapter merged into it included).
    """

    def __init__(self, layer, r: int, scale: float, dropout: float = 0.0, init: str = "default"):
        super().__init__(layer.kind, layer.weight, r, scale, dropout, init)
        object.__setattr__(self, "host", layer)
        norm = self.weight_norm()  # ‖W + s·BA‖: the model starts unchanged
        if not self.kind.linear_layout:  # peft keeps a convolution's magnitude as (1, out, 1, ...)
            norm = norm.view(1, -1, *[1] * (layer.weight.dim() - 2))
        self.lora_magnitude_vector = nn.Parameter(norm.clone())
        self._merged_norm = None  # the norm the merge used: unmerging must divide by the same one

    def magnitude(self) -> torch.Tensor:
        """m as one entry per output unit (whatever shape peft's file gives it)."""
        return self.lora_magnitude_vector.reshape(-1)

    def base_weight(self) -> torch.Tensor:
        """The base weight the layer runs with, in the canonical (out, in, *kernel) layout."""
        weight = self.host.weight
        if self.host.weight_mask is not None:
            weight = weight * self.host.weight_mask
        return self.kind.to_canonical(weight)

    def low_rank_weight(self) -> torch.Tensor:
        """B A in the canonical layout (no scale)."""
        return self.kind.to_canonical(self.kind.factors_to_weight(self.lora_A, self.lora_B))

    def weight_norm(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """‖W + s·BA‖ per output unit (over the inputs and kernel), in ``weight``'s dtype (default: the
        base weight), without gradient: the paper's §4.3, and peft's."""
        weight = self.base_weight() if weight is None else weight
        combined = weight + self.scale * self.low_rank_weight().detach().to(weight.dtype)
        return torch.linalg.norm(combined.flatten(1), dim=1).to(weight.dtype).detach()

    def add_output(self, y, x):
        weight = self.base_weight().to(x.dtype)  # peft computes the norm in the input's dtype
        factor = self._along(self.magnitude() / self.weight_norm(weight), y, self.kind.output_channel_dim)
        if self.training and self.dropout > 0:
            x = F.dropout(x, self.dropout, training=True)
            base = self._linear_map(x, weight)  # peft rescales W·dropout(x), recomputed, not the base output
        else:
            bias = self.host.bias
            base = y if bias is None else y - self._along(bias, y, self.kind.output_channel_dim)
        low_rank = self._low_rank_map(x.to(self.lora_A.dtype)).to(y.dtype)
        return y + ((factor - 1) * base + factor * low_rank * self.scale)

    @staticmethod
    def _along(vector: torch.Tensor, t: torch.Tensor, dim: int) -> torch.Tensor:
        """``vector`` shaped to broadcast along ``t``'s dimension ``dim`` (the output units)."""
        shape = [1] * t.dim()
        shape[dim] = -1
        return vector.to(t.dtype).view(shape)

    def _linear_map(self, x, canonical_weight):
        """W x without the bias."""
        if self.kind.linear_layout:
            return F.linear(x, canonical_weight)
        return self.kind.forward(x, self.kind.from_canonical(canonical_weight), None)

    def _low_rank_map(self, x):
        """B A x with the layer's own op."""
        h = self.kind.project_in(x, self.lora_A)
        if self.kind.linear_layout:
            return F.linear(h, self.lora_B)
        return self.kind.add_project_out(0, h, self.lora_B, 1.0)  # conv: 0 + conv(h, B)

    # ---- merging: W' = m/‖W + s·BA‖ · (W + s·BA), row by row ----
    def _row_factor(self, norm: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self._along(self.magnitude() / norm, weight, 0)

    def delta_weight(self):
        """The dense change W' - W in the base weight's native layout (with the live norm)."""
        weight = self.base_weight()
        low_rank = self.scale * self.low_rank_weight().to(weight.dtype)
        merged = self._row_factor(self.weight_norm(), weight) * (weight + low_rank)
        return self.kind.from_canonical(merged - weight)

    def merge_into(self, weight, bias, mask):
        if mask is not None:
            raise ValueError("DoRA rescales whole rows, so it cannot be merged into a pruned layer while keeping "
                             "its sparsity; merge with keep_sparsity=False")
        norm = self.weight_norm()
        canonical = self.kind.to_canonical(weight)  # a view: the in-place ops write the weight
        low_rank = self.scale * self.low_rank_weight().to(weight.dtype)
        canonical.add_(low_rank).mul_(self._row_factor(norm, canonical))
        self._merged_norm = norm

    def unmerge_from(self, weight, bias, mask):
        canonical = self.kind.to_canonical(weight)
        low_rank = self.scale * self.low_rank_weight().to(weight.dtype)
        canonical.div_(self._row_factor(self._merged_norm, canonical)).sub_(low_rank)
        self._merged_norm = None

    def peft_key(self, key):
        if key == "lora_magnitude_vector":
            return key  # peft's file key has no ".weight" (its module's parameter is renamed on save)
        return super().peft_key(key)

    # Removing input units changes every row's norm, so a shrunk DoRA layer would not compute what
    # the pruned one did (LoRA's factors slice exactly; DoRA's direction does not).
    sliceable = False

    def slice_(self, dim, keep):
        raise NotImplementedError("DoRA's norms run over the input units, so it cannot be sliced by structured "
                                  "pruning; merge it (keep_sparsity=False) or delete it before shrinking")


def make_dora(layer, config: DoraConfig) -> DoraDelta:
    config = config.for_layer(layer.module_name)
    if isinstance(layer.kind, EmbeddingKind):  # peft's embedding DoRA takes norms over the vocabulary: not here
        raise ValueError(f"DoRA supports Linear, GPT-2 Conv1D and Conv layers; {layer.module_name} is {layer.describe()} "
                         "(choose targets among the linear or convolution layers)")
    if not layer.weight.is_floating_point():
        raise ValueError(f"DoRA needs the base weight's norm, but {layer.module_name} has a {layer.weight.dtype} "
                         "(e.g. 4-bit) weight; apply DoRA to a floating-point base")
    return DoraDelta(layer, config.r, config.scale, config.dropout, config.init)
