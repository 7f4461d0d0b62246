"""Adding trainable tokens: rows of the input embedding, and of an output head tied to it."""

from __future__ import annotations

from torch import nn

from ...core.adapters import all_or_nothing
from ...core.layer_kinds import EmbeddingKind, kind_class_for
from ...core.state import wrap
from ...core.targets import TargetError, select
from ...core.tuned_layer import TunedLayer
from .config import TrainableTokensConfig
from .delta import TiedTokenRows, TokenRows


def embedding_targets(model: nn.Module, config: TrainableTokensConfig) -> list[str]:
    """The embeddings whose rows train: ``config.targets``, or the model's input embedding."""
    if config.targets is not None:
        names = select(model, config.targets)
    else:
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        names = [n for n, m in model.named_modules() if m is embedding] if embedding is not None else []
        if not names:
            raise TargetError(f"{type(model).__name__} names no input embedding (get_input_embeddings); pass targets=")
    for name in names:
        module = model.get_submodule(name)
        if kind_class_for(module.base_layer if isinstance(module, TunedLayer) else module) is not EmbeddingKind:
            raise TargetError(f"trainable tokens train rows of an embedding; {name} is {type(module).__name__} "
                              "(choose the input embedding, e.g. targets=['embed_tokens'])")
    return names


def tied_heads(model: nn.Module, embedding: nn.Module) -> list[str]:
    """Names of the linear layers holding the very weight tensor of ``embedding`` (tied embeddings)."""
    heads = []
    for name, module in model.named_modules():
        if module is embedding or getattr(module, "weight", None) is not embedding.weight:
            continue
        base = module.base_layer if isinstance(module, TunedLayer) else module
        if not isinstance(base, nn.Linear) or getattr(module, "bias", None) is not None:
            raise ValueError(f"{name} ({type(base).__name__}) shares the embedding's weight; trainable tokens follow a "
                             "tied output head only when it is a Linear layer without bias")
        heads.append(name)
    return heads


def apply_trainable_tokens(model: nn.Module, config: TrainableTokensConfig, name: str) -> None:
    targets = embedding_targets(model, config)
    plan = []
    for target in targets:  # every check before the model changes
        embedding = model.get_submodule(target)
        config.check_vocabulary(embedding.weight.shape[0], target)
        plan.append((target, tied_heads(model, embedding)))
    with all_or_nothing(model, name):
        for target, heads in plan:
            layer = wrap(model, target)
            source = TokenRows(layer.kind, layer.weight, config.token_indices, config.init_weights)
            layer.add_delta(name, source)
            for head in heads:
                head_layer = wrap(model, head)
                head_layer.add_delta(name, TiedTokenRows(head_layer.kind, source))
