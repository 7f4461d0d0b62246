"""Prefix tuning under gradient checkpointing: a cache that never grows, and layers told to keep it.

A checkpointed layer runs twice: in the forward and again when the backward recomputes it. A
``DynamicCache`` would store the layer's keys on both runs, so the recompute would see the prefixes
and the text twice; and by default transformers' checkpointed layers (and GPT-2's model loop) drop
the cache altogether. So for a checkpointed training call the prompt host passes a
``PrefixOnlyCache``, whose ``update`` returns prefix + this call's states and stores nothing, and
``CheckpointedCall`` switches the model, for that call only, to keep it: transformers'
``GradientCheckpointingLayer._can_checkpoint_with_cache`` (its switch for layers that only read the
cache) on every checkpointed layer, and the model-level ``gradient_checkpointing`` flag off on the
modules that are not layers (the layers checkpoint themselves; only the flag's cache dropping goes).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache


class PrefixOnlyCache(DynamicCache):
    def __init__(self, config, prefixes: list[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__(config=config)
        self.prefixes = prefixes
        self.layers_read: set[int] = set()  # checked after the call: every layer must have seen its prefix
        for layer, (keys, values) in enumerate(prefixes):
            super().update(keys, values, layer)  # so get_seq_length and the attention masks count the prefixes

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.layers_read.add(layer_idx)
        keys, values = self.prefixes[layer_idx]
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


class CheckpointedCall:
    """The per-call switches; ``None`` from ``start`` when nothing in the model checkpoints."""

    def __init__(self, layers: list[nn.Module], loops: list[nn.Module], cache: PrefixOnlyCache):
        self.layers, self.loops, self.cache = layers, loops, cache

    @classmethod
    def start(cls, model: nn.Module, prefixes, reentrant_safe: bool):
        """``prefixes``: a callable giving every layer's (keys, values), run only when needed."""
        flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
        if not flagged:
            return None
        try:
            from transformers.modeling_layers import GradientCheckpointingLayer
        except ImportError:  # transformers before 4.52
            GradientCheckpointingLayer = ()
        layers = [m for m in flagged if isinstance(m, GradientCheckpointingLayer) and hasattr(m, "_can_checkpoint_with_cache")]
        if not layers:
            raise ValueError(
                f"prefix tuning cannot train {type(model).__name__} with gradient checkpointing: its checkpointed layers "
                "drop the cache that carries the prefixes (transformers 5's GradientCheckpointingLayer can keep it); "
                "call model.gradient_checkpointing_disable(), upgrade transformers, or use prompt tuning / P-tuning"
            )
        if not reentrant_safe and any(_reentrant(m) for m in layers):
            # each layer's own backward would run through the one shared MLP graph, which frees it the first time
            raise ValueError(
                "prefix tuning with projection=True cannot train under reentrant gradient checkpointing; enable it with "
                "gradient_checkpointing_kwargs={'use_reentrant': False} (transformers' default), or fold() the MLP first"
            )
        loops = [m for m in flagged if not isinstance(m, GradientCheckpointingLayer)]
        for layer in layers:
            layer._can_checkpoint_with_cache = True
        for loop in loops:
            loop.gradient_checkpointing = False
        return cls(layers, loops, PrefixOnlyCache(model.config, prefixes()))

    def restore(self) -> None:
        """Put the model's switches back."""
        for module in self.layers:
            del module.__dict__["_can_checkpoint_with_cache"]  # back to the class's own setting
        for module in self.loops:
            module.gradient_checkpointing = True

    def finish(self, model: nn.Module) -> None:
        """Put the model's switches back, then check that every layer saw its prefixes."""
        self.restore()
        expected = len(self.cache.prefixes)
        if len(self.cache.layers_read) < expected:
            raise ValueError(
                f"prefix tuning cannot train {type(model).__name__} with gradient checkpointing: the model dropped the "
                f"attention cache, so only {len(self.cache.layers_read)} of {expected} layers saw their prefixes; "
                "call model.gradient_checkpointing_disable() or use prompt tuning / P-tuning"
            )


def _reentrant(layer: nn.Module) -> bool:
    checkpoint = getattr(layer, "_gradient_checkpointing_func", None)
    return bool(getattr(checkpoint, "keywords", {}).get("use_reentrant", False))
