"""What an input delta needs to know about a model, with clear errors when the model cannot be hooked."""

from __future__ import annotations

import inspect

from torch import nn


def _accepts(module: nn.Module, argument: str) -> bool:
    return argument in inspect.signature(module.forward).parameters


def _text_config(model: nn.Module, method: str):
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers"):
        raise TypeError(
            f"{method} needs a Hugging Face transformers model (with a .config); {type(model).__name__} has none to hook"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise TypeError(f"{method} supports encoder-only and decoder-only models; {type(model).__name__} is encoder-decoder")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def input_embedding(model: nn.Module, method: str) -> nn.Module:
    """The word embedding that virtual tokens are prepended to."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if embedding is None or getattr(embedding, "weight", None) is None or embedding.weight.dim() != 2:
        raise TypeError(f"{method} needs a model with an input embedding (get_input_embeddings()); {type(model).__name__} has none")
    if not _accepts(model, "inputs_embeds"):
        raise TypeError(f"{method} needs a model whose forward takes inputs_embeds; {type(model).__name__}.forward does not")
    return embedding


def token_dim(model: nn.Module, method: str) -> int:
    return input_embedding(model, method).weight.shape[1]


# transformers 5.24 renamed the attention-cache argument from ``past_key_values`` to ``cache``.
CACHE_ARGUMENTS = ("past_key_values", "cache")


def cache_argument(model: nn.Module) -> str | None:
    """The name under which ``model`` takes its attention cache, or None if no submodule takes one.

    The model's own forward may pass it on through ``**kwargs`` (BertForSequenceClassification does), so
    the inner modules are asked too."""
    for modules in ([model], list(model.modules())):  # the model's own name wins over its inner modules
        for name in CACHE_ARGUMENTS:
            if any(_accepts(m, name) for m in modules):
                return name
    return None


def kv_shape(model: nn.Module, method: str) -> tuple[int, int, int]:
    """(layers, key/value heads, head_dim) of the attention cache (GQA: fewer kv heads than query heads)."""
    config = _text_config(model, method)
    input_embedding(model, method)  # the dtype and batch come from it
    if cache_argument(model) is None:
        raise TypeError(
            f"{method} needs an attention cache ({' or '.join(CACHE_ARGUMENTS)}); {type(model).__name__} has none"
        )
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return config.num_hidden_layers, kv_heads, head_dim


def num_layers_and_heads(model: nn.Module, method: str) -> tuple[int, int]:
    """What peft records in adapter_config.json for the embedding-side methods."""
    config = _text_config(model, method)
    return config.num_hidden_layers, config.num_attention_heads
