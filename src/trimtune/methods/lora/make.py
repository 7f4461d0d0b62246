"""The LoRA delta for one wrapped layer: plain, masked (``follow_mask``) or over a rewritten base (PiSSA, OLoRA)."""

from __future__ import annotations

import torch

from .base_inits import initial_factors, rewrites_base
from .delta import LoraConfig, LoraDelta, MaskedLoraDelta
from .gradient_init import lora_ga_factors
from .residual import ResidualLoraDelta


def make_lora(layer, config: LoraConfig, gradient: torch.Tensor | None = None) -> LoraDelta:
    """``gradient``: the layer weight's mean gradient on the calibration batches (LoRA-GA only)."""
    config = config.for_layer(layer.module_name)
    if rewrites_base(config.init):  # the targets were checked first (check_rewritable): no half-rewritten model
        delta = ResidualLoraDelta(layer, config.r, config.scale, config.dropout, config.init, _start(layer, config, gradient))
        delta.take_from_base(layer)
        return delta
    if not config.follow_mask:
        return LoraDelta(layer.kind, layer.weight, config.r, config.scale, config.dropout, config.init)
    if not layer.weight.is_floating_point():
        raise ValueError(f"follow_mask=True adds BA to the weight, but {layer.module_name} has a "
                         f"{layer.weight.dtype} (e.g. 4-bit) base; use follow_mask=False on quantised layers")
    return MaskedLoraDelta(layer.kind, layer.weight, config.r, config.scale, config.dropout, config.init)


def _start(layer, config: LoraConfig, gradient) -> tuple[torch.Tensor, torch.Tensor]:
    if config.init == "lora_ga":
        return lora_ga_factors(layer.kind.to_canonical(gradient), config.r, config.scale, config.lora_ga_direction,
                               config.lora_ga_scale, config.lora_ga_gamma)
    return initial_factors(layer.kind.to_canonical(layer.weight.detach()), config.r, config.scale, config.init)
