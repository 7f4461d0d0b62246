"""LoRA+ (Hayou et al., 2024): the B factors learn ``ratio`` times faster than the A factors.

LoRA's B starts at zero and A at random; with one learning rate for both, B learns too slowly in wide
models. LoRA+ puts the parameters into groups, as the authors' code and peft's
``create_loraplus_optimizer`` do, so the two give the same optimizer:

- A factors (and any other matrix that trains, e.g. a head copy's weight): ``lr``;
- LoRA on an embedding (both factors): ``embedding_lr``;
- B factors and every trained vector (biases, DoRA's magnitudes): ``lr · ratio``, with
  ``weight_decay`` except on biases and LayerNorm parameters.

``loraplus_optimizer(model, lr, ratio=16)`` builds it; ``functools.partial(loraplus_optimizer, ratio=16)``
is a factory ``train(optimizer=...)`` calls with the model and its learning rate (what a recipe's
``optimizer: {loraplus_ratio: 16}`` does).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ...core.config import ConfigError, check_positive
from ...core.layer_kinds import EmbeddingKind
from .delta import LoraConfig, LoraDelta


def loraplus_optimizer(model: nn.Module, lr: float, ratio: float, *, embedding_lr: float = 1e-6, weight_decay: float = 0.0,
                       extra: Iterable[nn.Parameter] = (), optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
                       **kwargs) -> torch.optim.Optimizer:
    """``optimizer_cls`` over the trainable parameters of ``model`` in LoRA+'s groups; ``extra``
    (parameters a training callback owns, e.g. distillation maps) learn at ``lr``; ``kwargs`` go to
    ``optimizer_cls`` (betas, eps, ...)."""
    for name, value in (("lr", lr), ("ratio", ratio), ("embedding_lr", embedding_lr)):
        check_positive(name, value)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ConfigError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    groups = loraplus_groups(model)
    if not groups["b"] and not groups["embedding"]:
        raise ValueError("LoRA+ found no LoRA factor among the trainable parameters: apply a LoRA adapter "
                         "(LoraConfig, DoraConfig, QLoraConfig) first")
    extra = list(extra)
    param_groups = [
        {"params": groups["a"], "lr": lr, "weight_decay": weight_decay},
        {"params": groups["embedding"], "lr": embedding_lr, "weight_decay": weight_decay},
        {"params": groups["b"], "lr": lr * ratio, "weight_decay": weight_decay},
        {"params": groups["b_no_decay"], "lr": lr * ratio, "weight_decay": 0.0},
    ] + ([{"params": extra, "lr": lr, "weight_decay": weight_decay}] if extra else [])
    return optimizer_cls(param_groups, lr=lr, **kwargs)


def loraplus_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters by LoRA+ group: "a", "embedding", "b", "b_no_decay"."""
    owners = dict(model.named_modules())
    groups = {"a": [], "embedding": [], "b": [], "b_no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = owners[owner_name]
        if isinstance(owner, LoraDelta) and isinstance(owner.kind, EmbeddingKind):
            groups["embedding"].append(param)
        elif leaf == "lora_B" or param.dim() == 1:
            no_decay = "bias" in name or isinstance(owner, nn.LayerNorm)  # as the authors' code (and peft's) decide
            groups["b_no_decay" if no_decay else "b"].append(param)
        else:
            groups["a"].append(param)
    return groups


def trains_lora_factors(config) -> bool:
    """Whether an adapter made from ``config`` has LoRA's A and B factors (LoRA, DoRA, QLoRA): what LoRA+ needs."""
    return isinstance(config, LoraConfig)
