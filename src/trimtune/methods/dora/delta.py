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
from ..lora.delta import LoraConfig, LoraDelta


@dataclass
class DoraConfig(LoraConfig):
    """LoraConfig's fields (r, alpha, dropout, targets, use_rslora, init, bias, modules_to_save,
    rank_pattern, alpha_pattern); DoRA adds a trained magnitude per output unit of each target.
    Linear and GPT-2 Conv1D layers only; follow_mask is not available (DoRA rescales whole rows)."""

    def __post_init__(self):
        if self.follow_mask:
            raise ConfigError("follow_mask=True is not available with DoRA, which rescales whole output rows; "
                              "use follow_mask=False")
        super().__post_init__()

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
        self.lora_magnitude_vector = nn.Parameter(self.weight_norm().clone())  # ‖W + s·BA‖: starts as the base
        self._merged_norm = None  # the norm the merge used: unmerging must divide by the same one

    def base_weight(self) -> torch.Tensor:
        """The base weight the layer runs with, in the canonical (out, in) layout."""
        weight = self.host.weight
        if self.host.weight_mask is not None:
            weight = weight * self.host.weight_mask
        return self.kind.to_canonical(weight)

    def weight_norm(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """‖W + s·BA‖ per output unit, in ``weight``'s dtype (default: the base weight), without
        gradient (the paper's §4.3, and peft's ``linalg.norm(..., dim=1)``)."""
        weight = self.base_weight() if weight is None else weight
        low_rank = (self.lora_B @ self.lora_A).detach().to(weight.dtype)
        return torch.linalg.norm(weight + self.scale * low_rank, dim=1).to(weight.dtype).detach()

    def add_output(self, y, x):
        weight = self.base_weight().to(x.dtype)  # peft computes the norm in the input's dtype
        factor = (self.lora_magnitude_vector / self.weight_norm(weight)).to(y.dtype)
        if self.training and self.dropout > 0:
            x = F.dropout(x, self.dropout, training=True)
            base = F.linear(x, weight)  # peft rescales W·dropout(x), recomputed, not the base output
        else:
            bias = self.host.bias
            base = y if bias is None else y - bias
        h = F.linear(x.to(self.lora_A.dtype), self.lora_A)
        low_rank = F.linear(h, self.lora_B).to(y.dtype)
        return y + ((factor - 1) * base + factor * low_rank * self.scale)

    # ---- merging: W' = m/‖W + s·BA‖ · (W + s·BA), row by row ----
    def _row_factor(self, norm: torch.Tensor, dtype) -> torch.Tensor:
        return (self.lora_magnitude_vector / norm).to(dtype).view(-1, 1)

    def delta_weight(self):
        """The dense change W' - W in the base weight's native layout (with the live norm)."""
        weight = self.base_weight()
        low_rank = self.scale * (self.lora_B @ self.lora_A).to(weight.dtype)
        merged = self._row_factor(self.weight_norm(), weight.dtype) * (weight + low_rank)
        return self.kind.from_canonical(merged - weight)

    def merge_into(self, weight, bias, mask):
        if mask is not None:
            raise ValueError("DoRA rescales whole rows, so it cannot be merged into a pruned layer while keeping "
                             "its sparsity; merge with keep_sparsity=False")
        norm = self.weight_norm()
        canonical = self.kind.to_canonical(weight)  # a view: the in-place ops write the weight
        low_rank = self.scale * (self.lora_B @ self.lora_A).to(weight.dtype)
        canonical.add_(low_rank).mul_(self._row_factor(norm, weight.dtype))
        self._merged_norm = norm

    def unmerge_from(self, weight, bias, mask):
        canonical = self.kind.to_canonical(weight)
        low_rank = self.scale * (self.lora_B @ self.lora_A).to(weight.dtype)
        canonical.div_(self._row_factor(self._merged_norm, weight.dtype)).sub_(low_rank)
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
    if not layer.kind.linear_layout:
        raise ValueError(f"DoRA supports Linear and GPT-2 Conv1D layers; {layer.module_name} is {layer.describe()} "
                         "(choose targets among the linear layers)")
    if not layer.weight.is_floating_point():
        raise ValueError(f"DoRA needs the base weight's norm, but {layer.module_name} has a {layer.weight.dtype} "
                         "(e.g. 4-bit) weight; apply DoRA to a floating-point base")
    return DoraDelta(layer, config.r, config.scale, config.dropout, config.init)
