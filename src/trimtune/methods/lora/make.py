"""The LoRA delta for one wrapped layer: plain, masked (``follow_mask``) or over a rewritten base
(PiSSA, OLoRA, LoRA-GA, CorDA: ``residual.py``)."""

from __future__ import annotations

import torch

from .base_inits import initial_factors, rewrites_base
from .context_init import corda_factors
from .delta import LoraConfig, LoraDelta, MaskedLoraDelta
from .gradient_init import lora_ga_factors
from .residual import ResidualLoraDelta


def make_lora(layer, config: LoraConfig, statistic: torch.Tensor | None = None) -> LoraDelta:
    """``statistic``: what a data-driven init measured for this layer on the calibration batches: the
    weight's mean gradient (LoRA-GA) or its inputs' covariance (CorDA)."""
    config = config.for_layer(layer.module_name)
    if rewrites_base(config.init):  # the targets were checked first (check_rewritable): no half-rewritten model
        delta = ResidualLoraDelta(layer, config.r, config.scale, config.dropout, config.init, _start(layer, config, statistic))
        delta.take_from_base(layer)
        return delta
    if not config.follow_mask:
        return LoraDelta(layer.kind, layer.weight, config.r, config.scale, config.dropout, config.init)
    if not layer.weight.is_floating_point():
        raise ValueError(f"follow_mask=True adds BA to the weight, but {layer.module_name} has a "
                         f"{layer.weight.dtype} (e.g. 4-bit) base; use follow_mask=False on quantised layers")
    return MaskedLoraDelta(layer.kind, layer.weight, config.r, config.scale, config.dropout, config.init)


def _start(layer, config: LoraConfig, statistic) -> tuple[torch.Tensor, torch.Tensor]:
    weight = layer.kind.to_canonical(layer.weight.detach())
    if config.init == "lora_ga":
        return lora_ga_factors(layer.kind.to_canonical(statistic), config.r, config.scale, config.lora_ga_direction,
                               config.lora_ga_scale, config.lora_ga_gamma)
    if config.init == "corda":
        return corda_factors(weight, statistic, config.r, config.scale, config.corda_method)
    return initial_factors(weight, config.r, config.scale, config.init)
