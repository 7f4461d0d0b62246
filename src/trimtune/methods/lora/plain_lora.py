"""Saving a LoRA over a rewritten base (PiSSA, OLoRA, LoRA-GA, CorDA) as a plain LoRA against the original base.

peft's ``save_pretrained(path_initial_model_for_weight_conversion=...)`` writes such an adapter as
``s·(B A − B0 A0)``: a plain LoRA of rank 2r (``[A; A0]``, ``[B, −B0]``; alpha doubled, or times √2
with rsLoRA, so the scale stays) with ``init_lora_weights: true``, for the *untouched* base. trimtune
always saves this way: the file then means the same to a peft user, to trimtune and to a run
directory reloaded later, and its base fingerprint is the original base's (so loading it onto the
rewritten base is refused: that weight's norm differs from the one recorded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

from ...core.io.gather import model_is_sharded
from ...core.state import layers, state_of
from .residual import ResidualLoraDelta


def plain_lora_config(config):
    """``config`` for the rank-2r plain LoRA: every rank doubled, every alpha scaled so the scale stays."""
    factor = math.sqrt(2) if config.use_rslora else 2  # alpha/√r or alpha/r unchanged at rank 2r
    return dataclasses.replace(
        config, r=2 * config.r, alpha=factor * config.alpha, init="default", init_batches=None,
        rank_pattern={k: 2 * v for k, v in config.rank_pattern.items()},
        alpha_pattern={k: factor * v for k, v in config.alpha_pattern.items()},
    )


@contextlib.contextmanager
def as_plain_lora(model, name: str):
    """For the block, adapter ``name`` is its plain-LoRA equivalent on the original base: the
    original weights are back (the residuals are kept aside, not recomputed, so the model is
    bit-identical afterwards) and each rewritten layer carries the rank-2r delta. Holds a second
    copy of each rewritten weight meanwhile."""
    state = state_of(model)
    config = state.adapters[name]
    rewritten = any(isinstance(layer.deltas[name], ResidualLoraDelta) for _, layer in layers(model) if name in layer.deltas)
    if rewritten and model_is_sharded(model):  # the original weights would have to be rebuilt shard by shard
        raise ValueError(f"adapter {name!r} (init={config.init!r}) rewrote the base, and saving it as a plain LoRA for the "
                         "original base is not supported on an FSDP-sharded model yet; save it from an unsharded model")
    swapped = []
    try:
        for _, layer in layers(model):
            delta = layer.deltas[name] if name in layer.deltas else None
            if isinstance(delta, ResidualLoraDelta):
                residual = layer.weight.data
                layer.weight.data = residual + delta.initial_change().to(residual.dtype)
                layer.deltas[name] = delta.as_plain_lora(layer.weight)
                swapped.append((layer, delta, residual))
        if swapped:
            state.adapters[name] = plain_lora_config(config)
        yield
    finally:
        state.adapters[name] = config
        for layer, delta, residual in swapped:
            layer.weight.data = residual
            layer.deltas[name] = delta
