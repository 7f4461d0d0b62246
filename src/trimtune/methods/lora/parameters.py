"""LoRA on a bare parameter (``LoraConfig.target_parameters``): one low-rank pair per expert.

A 3-D expert weight (experts, out, in) gets, per expert e, ``ΔW_e = scale · B_e A_e`` of rank r. The
factors are stored as peft's ``ParamWrapper`` stores them, so adapter files convert by renaming keys
only: ``lora_A`` is (r·experts, in), expert e's rows e·r … e·r+r-1; ``lora_B`` is (out, r·experts), expert
e's columns e, e+experts, … (every experts-th column: peft reshapes it to (out, r, experts)). A layout
stored (experts, in, out) (``is_transposed`` on the module) gets ``ΔW_e`` transposed. A 2-D parameter
(out, in) is one expert: plain LoRA, ``ΔW = scale · B A``.

The change is folded into the weight in one ``baddbmm`` when the module runs (``added_to``), never kept
as a separate full-size tensor. LoRA's input dropout cannot exist here (the module, not LoRA, sees the
input), so ``LoraConfig`` refuses dropout with target_parameters, as peft does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...core.delta import Delta


class ParameterLoraDelta(Delta):
    def __init__(self, weight: torch.Tensor, r: int, scale: float, init: str = "default", transposed: bool = False):
        super().__init__(None)  # no layer kind: the owning module's own forward uses the weight
        self.experts = weight.shape[0] if weight.dim() == 3 else 0  # 0: a 2-D weight, one plain pair
        out_features, in_features = _out_in(weight, transposed)
        self.r, self.scale, self.transposed = r, scale, transposed
        pairs = max(self.experts, 1)
        dtype = weight.dtype
        self.lora_A = nn.Parameter(torch.empty(r * pairs, in_features, device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(out_features, r * pairs, device=weight.device, dtype=dtype))
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "default") -> None:
        if init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / self.r)
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lhs, rhs) with ``ΔW = scale · lhs @ rhs`` in the weight's own layout (batched per expert)."""
        if not self.experts:
            return self.lora_B, self.lora_A
        a = self.lora_A.reshape(self.experts, self.r, -1)  # (experts, r, in)
        b = self.lora_B.reshape(self.lora_B.shape[0], self.r, self.experts).permute(2, 0, 1)  # (experts, out, r)
        return (a.transpose(-2, -1), b.transpose(-2, -1)) if self.transposed else (b, a)

    def added_to(self, weight: torch.Tensor) -> torch.Tensor:
        lhs, rhs = (f.to(weight.dtype) for f in self.factors())
        fold = torch.baddbmm if self.experts else torch.addmm
        return fold(weight, lhs, rhs, alpha=self.scale)

    def delta_weight(self) -> torch.Tensor:
        lhs, rhs = self.factors()
        return (lhs @ rhs) * self.scale

    def peft_key(self, key):
        return f"{key}.weight"  # peft: lora_A / lora_B are nn.Linear modules

    def extra_repr(self):
        return f"r={self.r}, experts={self.experts}, scale={self.scale:g}"


def _out_in(weight: torch.Tensor, transposed: bool) -> tuple[int, int]:
    if weight.dim() == 2:
        return weight.shape[0], weight.shape[1]
    return (weight.shape[2], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[2])


def make_parameter_lora(weight: torch.Tensor, full_name: str, owner: nn.Module, config) -> ParameterLoraDelta:
    config = config.for_layer(full_name)  # rank_pattern / alpha_pattern match the parameter's name, as in peft
    transposed = weight.dim() == 3 and bool(getattr(owner, "is_transposed", False))  # transformers' experts flag
    return ParameterLoraDelta(weight, config.r, config.scale, config.init, transposed)
