"""Adding an AdaLoRA adapter: its deltas on the targets, and the rank budget that trains with them."""

from __future__ import annotations

from torch import nn

from ...core.adapters import apply_weight_method
from ...core.state import state_of
from .budget import RankAllocator
from .delta import AdaLoraConfig, make_adalora


def apply_adalora(model: nn.Module, config: AdaLoraConfig, name: str) -> None:
    apply_weight_method(model, config, name, make_adalora)
    state_of(model).callbacks[name] = RankAllocator(model, config, name)  # trimtune.train runs it every step
