"""Prefix tuning (Li & Liang 2021): trainable key/value prefixes in every attention layer.

The prefixes enter through the attention cache (a ``DynamicCache`` filled at the first step), so
they work with ``generate()``, grouped-query attention (prefixes have ``num_key_value_heads`` heads),
GPT-2 and BERT alike. With ``projection=True`` the prefixes are produced by an MLP from a smaller
table (more stable training); ``fold`` replaces the MLP by its output after training.
Layout of a table row, as in peft: ``(layers, key|value, kv_heads, head_dim)`` flattened.

Init ``RANDOM`` (as peft), ``ZERO``, or ``TEXT``: the keys and values the model itself computes for
``init_text``'s words (repeated or truncated to n tokens) — Li & Liang's init from the activations of real
words, which they found to help most with little data. The text is read without special tokens: the
prefix is context in front of the input, whose own [CLS]/BOS stays the one start marker (with them the
MiniLM demo lost 2.5 points, seed 0). With the MLP, its last layer is solved so that the MLP
outputs exactly those keys and values (see ``fit_output``). Only the start differs: files stay peft's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...core.adapters import disable_adapters
from ...core.config import ConfigError, check_choice, check_positive_int
from ...core.input_deltas.apply import add_input_delta, check_prompt_fields, check_text_init, text_token_ids
from ...core.input_deltas.input_delta import InputDelta
from ...core.input_deltas.model_info import cache_argument, kv_shape


@dataclass
class PrefixTuningConfig:
    num_virtual_tokens: int = 20
    projection: bool = False
    encoder_hidden_size: int | None = None  # MLP width with projection; default: the key/value width
    init: str = "RANDOM"  # "ZERO": prefixes start at zero; "TEXT": at the model's keys/values for init_text
    init_text: str | None = None
    tokenizer: object = None  # a tokenizer path (str) or a tokenizer object; only for init="TEXT"
    modules_to_save: Sequence[str] = ()

    peft_type = "PREFIX_TUNING"
    sizes_by_kv_heads = True  # peft sizes prefixes by the key/value heads (GQA)

    def __post_init__(self):
        check_prompt_fields(self)
        check_choice("projection", self.projection, (True, False))
        check_choice("init", self.init, ("RANDOM", "ZERO", "TEXT"))
        check_text_init(self)
        if self.encoder_hidden_size is not None:
            check_positive_int("encoder_hidden_size", self.encoder_hidden_size)

    def to_peft_dict(self) -> dict:
        return {
            "prefix_projection": self.projection,
            "encoder_hidden_size": self.encoder_hidden_size,
            "init_weights": "zero" if self.init == "ZERO" else None,  # peft has no TEXT init; the file needs none
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

    def fit_output(self, target: torch.Tensor) -> None:
        """Solve the last layer (weight and bias) so that the MLP outputs ``target`` (n, layers * 2 * kv_dim)
        for the current table: a linear least-squares problem in the hidden activations, exactly solvable
        (minimum-norm solution) when hidden + 1 >= n; the table and first layer keep their random init."""
        first, last = self.transform[:2], self.transform[-1]
        n, hidden = self.num_virtual_tokens, last.in_features
        if hidden + 1 < n:
            raise ConfigError(
                f"init='TEXT' with projection needs encoder_hidden_size >= num_virtual_tokens - 1 (the MLP must "
                f"reproduce each token's keys and values); got encoder_hidden_size={hidden}, num_virtual_tokens={n}"
            )
        with torch.no_grad():
            features = first(self.embedding.weight).double()
            features = torch.cat([features, features.new_ones(n, 1)], dim=1)  # the bias column
            solution = torch.linalg.pinv(features) @ target.double()  # (hidden + 1, width)
            last.weight.copy_(solution[:-1].T)
            last.bias.copy_(solution[-1])


def real_word_prefixes(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Every layer's keys and values as the base model (adapters off, eval mode) reads ``ids``, in the
    table's layout (len(ids), layers * 2 * kv_dim). The prefixes then start as a real context the model
    understands; rotary keys carry positions 0..n-1, which is where the prefix sits."""
    from transformers import DynamicCache


    device = model.get_input_embeddings().weight.device
    ids = ids.to(device).unsqueeze(0)
    cache = DynamicCache(config=model.config)
    modes = {module: module.training for module in model.modules()}
    try:
        with disable_adapters(model), torch.no_grad():
            model.eval()
            model(input_ids=ids, attention_mask=torch.ones_like(ids), **{cache_argument(model): cache})
    finally:
        for module, mode in modes.items():
            module.training = mode
    kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])  # (layers, 2, heads, n, dim)
    return kv.permute(3, 0, 1, 2, 4).reshape(ids.shape[1], -1).float()


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
    if config.init == "TEXT":
        ids = text_token_ids(config.tokenizer, config.init_text, config.num_virtual_tokens,
                             model.get_input_embeddings().num_embeddings, special_tokens=False)
        target = real_word_prefixes(model, ids)
        if config.projection:
            delta.fit_output(target)
        else:
            with torch.no_grad():
                delta.embedding.weight.copy_(target)
    add_input_delta(model, name, delta, config.modules_to_save)
