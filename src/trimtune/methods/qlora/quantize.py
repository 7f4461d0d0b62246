"""``quantize_base``: store the targeted linear layers' weights in 4 bits, inside their wrappers."""

from __future__ import annotations

from torch import nn

from ...core.four_bit import QuantConfig, bnb_module, is_4bit, quantize_weight
from ...core.layer_kinds import LinearKind, kind_class_for
from ...core.state import wrap
from ...core.targets import select


def quantize_base(model: nn.Module, targets="all-linear", config: QuantConfig | None = None) -> list[str]:
    """Store the weights of the ``targets`` linear layers in 4 bits (default: every linear layer but
    the output head). Returns the names of the quantised layers."""
    config = config or QuantConfig()
    bnb_module()
    names = select(model, targets)
    for name in names:
        module = model.get_submodule(name)
        base = getattr(module, "base_layer", module)
        if kind_class_for(base) is not LinearKind:
            raise ValueError(f"only nn.Linear weights can be stored in 4 bits; {name} is {type(base).__name__}")
    for name in names:
        layer = wrap(model, name)
        if not is_4bit(layer.weight):
            layer.weight = quantize_weight(layer.weight, config)
    return names
