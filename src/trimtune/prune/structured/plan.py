"""Checks that need only the model's config, run before any weight is read: the model type, and that
every ratio leaves something of every structure. Also the config a shrunk model is written with."""

from __future__ import annotations

import copy

from ...core.architectures import architecture
from ...core.config import ConfigError
from .config import StructuredConfig
from .importance import removed_count
from .parts import check_supported

BIAS_FLAGS = {"llama": ("attention_bias", "mlp_bias"), "gpt2": None}  # where o/down biases can be written


def _heads(config) -> tuple[int, int]:
    q = getattr(config, "num_attention_heads", None) or config.n_head
    return q, getattr(config, "num_key_value_heads", None) or q


def check_plan(model_config, config: StructuredConfig) -> None:
    model_type = getattr(model_config, "model_type", None)
    check_supported(model_type, bool(config.heads), bool(config.hidden))
    if config.repair == "bias" and (config.heads or config.ffn) and model_type not in BIAS_FLAGS:
        raise ConfigError(
            f"repair 'bias' adds biases to o_proj/down_proj, which {model_type}'s config cannot describe; use repair 'lstsq' or 'none'"
        )
    layers = getattr(model_config, "num_hidden_layers", None) or model_config.n_layer
    if config.drop_layers >= layers:
        raise ConfigError(f"drop_layers {config.drop_layers} would remove every one of the model's {layers} blocks; keep at least one")
    if config.heads:
        q, kv = _heads(model_config)
        if q % kv:
            raise ConfigError(f"num_attention_heads {q} is not a multiple of num_key_value_heads {kv}")
        if q == kv or config.gqa == "kv":
            removed_count(config.heads, kv, "heads (KV groups)")
        else:
            removed_count(config.heads, q // kv, "heads (query heads per KV group)")
    if config.ffn:
        removed_count(config.ffn, getattr(model_config, "intermediate_size", None) or model_config.n_inner or 4 * model_config.n_embd, "ffn",
                      config.round_to)
    if config.hidden:
        removed_count(config.hidden, model_config.hidden_size, "hidden", config.round_to)


def shrunk_config(model_config, widths: dict, kept_blocks: list[int], config: StructuredConfig):
    """A copy of the model's config describing the new shapes (uniform per layer by construction).
    ``widths``: q_heads, kv_heads, head_dim, ffn, hidden of any kept block."""
    new = copy.deepcopy(model_config)
    model_type = new.model_type
    if architecture(model_type).qkv is not None:  # GPT-2: only depth and FFN can change
        new.n_layer = len(kept_blocks)
        new.n_inner = widths["ffn"]
        return new
    new.num_hidden_layers = len(kept_blocks)
    new.hidden_size = widths["hidden"]
    new.num_attention_heads = widths["q_heads"]
    new.num_key_value_heads = widths["kv_heads"]
    new.head_dim = widths["head_dim"]  # explicit: hidden_size // heads no longer gives it
    new.intermediate_size = widths["ffn"]
    layer_types = getattr(new, "layer_types", None)
    if layer_types:
        new.layer_types = [layer_types[i] for i in kept_blocks]
    flags = BIAS_FLAGS.get(model_type)
    if config.repair == "bias" and flags:
        if config.heads:
            setattr(new, flags[0], True)
        if config.ffn:
            setattr(new, flags[1], True)
    return new
