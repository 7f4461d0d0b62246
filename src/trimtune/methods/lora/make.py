"""The LoRA delta for one wrapped layer: plain, masked (``follow_mask``) or over a rewritten base (PiSSA, OLoRA)."""

from __future__ import annotations

from .base_inits import rewrites_base
from .delta import LoraConfig, LoraDelta, MaskedLoraDelta
from .residual import ResidualLoraDelta


def make_lora(layer, config: LoraConfig) -> LoraDelta:
    config = config.for_layer(layer.module_name)
    if rewrites_base(config.init):  # the targets were checked first (check_rewritable): no half-rewritten model
        delta = ResidualLoraDelta(layer, config.r, config.scale, config.dropout, config.init)
        delta.take_from_base(layer)
        return delta
    if not config.follow_mask:
        return LoraDelta(layer.kind, layer.weight, config.r, config.scale, config.dropout, config.init)
    if not layer.weight.is_floating_point():
        raise ValueError(f"follow_mask=True adds BA to the weight, but {layer.module_name} has a "
                         f"{layer.weight.dtype} (e.g. 4-bit) base; use follow_mask=False on quantised layers")
    return MaskedLoraDelta(layer.kind, layer.weight, config.r, config.scale, config.dropout, config.init)
