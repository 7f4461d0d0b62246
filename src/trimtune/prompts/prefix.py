"""Prefix tuning (Li & Liang 2021): trainable key/value prefixes in every attention layer.

The prefixes enter through the attention cache (a ``DynamicCache`` filled at the first step), so
they work with ``generate()``, grouped-query attention (prefixes have ``num_key_value_heads`` heads),
GPT-2 and BERT alike. With ``projection=True`` the prefixes are produced by an MLP from a smaller
table (more stable training); ``fold`` replaces the MLP by its output after training.
Layout of a table row, as in peft: ``(layers, key|value, kv_heads, head_dim)`` flattened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import check_choice, check_positive_int
from ..registry import register_model_method
from .apply import add_input_delta, check_prompt_fields
from .base import InputDelta
from .model_info import kv_shape


@dataclass
class PrefixTuningConfig:
    num_virtual_tokens: int = 20
    projection: bool = False
    encoder_hidden_size: int | None = None  # MLP width with projection; default: the key/value width
    init: str = "RANDOM"  # or "ZERO": prefixes start at zero
    modules_to_save: Sequence[str] = ()

    peft_type = "PREFIX_TUNING"

    def __post_init__(self):
        check_prompt_fields(self)
        check_choice("projection", self.projection, (True, False))
        check_choice("init", self.init, ("RANDOM", "ZERO"))
        if self.encoder_hidden_size is not None:
            check_positive_int("encoder_hidden_size", self.encoder_hidden_size)

    def to_peft_dict(self) -> dict:
        return {
            "prefix_projection": self.projection,
            "encoder_hidden_size": self.encoder_hidden_size,
            "init_weights": "zero" if self.init == "ZERO" else None,
        }

    @classmethod
    def from_peft_dict(cls, fields: dict, modules_to_save=()) -> PrefixTuningConfig:
        return cls(
            num_virtual_tokens=fields["num_virtual_tokens"],
            projection=bool(fields.get("prefix_projection")),
            encoder_hidden_size=fields.get("encoder_hidden_size"),
            modules_to_save=modules_to_save,
        )


class PrefixEncoder(InputDelta):
    """A table of width kv_dim and an MLP to all layers' keys and values (peft's module names)."""

    def __init__(self, num_virtual_tokens: int, shape: tuple[int, int, int], hidden: int):
        layers, heads, head_dim = shape
        token_dim = heads * head_dim
        super().__init__(num_virtual_tokens, token_dim, side="cache", kv_shape=shape)
        self.transform = nn.Sequential(
            nn.Linear(token_dim, hidden), nn.Tanh(), nn.Linear(hidden, layers * 2 * token_dim)
        )

    def compute(self) -> torch.Tensor:
        return self.transform(self.embedding.weight)


@register_model_method(PrefixTuningConfig)
def apply_prefix_tuning(model: nn.Module, config: PrefixTuningConfig, name: str) -> None:
    shape = kv_shape(model, "prefix tuning")
    layers, heads, head_dim = shape
    if config.projection:
        delta = PrefixEncoder(config.num_virtual_tokens, shape, config.encoder_hidden_size or heads * head_dim)
        last = delta.transform[-1]
    else:
        delta = InputDelta(config.num_virtual_tokens, layers * 2 * heads * head_dim, side="cache", kv_shape=shape)
        last = delta.embedding
    if config.init == "ZERO":
        for param in last.parameters():
            nn.init.zeros_(param)
    add_input_delta(model, name, delta, config.modules_to_save)
