"""Calibration statistics for data-aware importances: input-channel norms (Wanda) and
accumulated |w · grad| (Taylor). ``batches`` is any iterable of model inputs: a tensor (passed
positionally) or a dict (passed as keyword arguments)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..core.state import wrapped
from .early_stop import stopping_after
from .prune_model import PruneConfig, select_layers


def _run(model: nn.Module, batch):
    return model(**batch) if isinstance(batch, dict) else model(batch)


def _targets(model, targets):
    """The target layers, wrapped; a refusal unwraps the ones this call wrapped (the model is as it was)."""
    return wrapped(model, select_layers(model, PruneConfig(targets=targets)))


@torch.no_grad()
def collect_input_norms(model: nn.Module, batches: Iterable, targets=None,
                        rows: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{layer: ||X_j||_2}`` over every input channel j, summed over all calibration tokens/pixels.
    ``rows`` (for layers whose channels come last): maps a layer's input to the (tokens, channels)
    rows that count, e.g. the sequential pipeline's ``token_rows``, which drops padding."""
    with _targets(model, targets) as layers:
        return _input_norms(model, layers, batches, rows)


def _input_norms(model: nn.Module, layers: dict, batches: Iterable, rows) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}

    def hook_for(name, layer):
        channel_dim = layer.kind.input_channel_dim

        def hook(module, args):
            x = args[0].detach()
            x = (rows(x) if rows is not None else x).float()
            dims = [d for d in range(x.dim()) if d != channel_dim % x.dim()]
            sq = x.pow(2).sum(dim=dims)
            sums[name] = sums[name] + sq if name in sums else sq

        return hook

    handles = [layer.register_forward_pre_hook(hook_for(n, layer)) for n, layer in layers.items()]
    try:
        count = 0
        with stopping_after(layers.values()) as run:
            for batch in batches:
                run(lambda: _run(model, batch))
                count += 1
    finally:
        for h in handles:
            h.remove()
    if not count:
        raise ValueError("collect_input_norms got no calibration batches; pass at least one")
    return {n: s.sqrt() for n, s in sums.items()}


def collect_taylor(
    model: nn.Module, batches: Iterable, loss_fn: Callable[[nn.Module, object], torch.Tensor], targets=None
) -> dict[str, torch.Tensor]:
    """``{layer: Σ_batches |w · dL/dw|}``; ``loss_fn(model, batch)`` returns a scalar loss.
    The weights get gradients only for the duration of the call."""
    with _targets(model, targets) as layers:
        return _taylor(model, layers, batches, loss_fn)


def _taylor(model: nn.Module, layers: dict, batches: Iterable, loss_fn) -> dict[str, torch.Tensor]:
    saved = {n: layer.weight.requires_grad for n, layer in layers.items()}
    scores: dict[str, torch.Tensor] = {}
    try:
        for layer in layers.values():
            layer.weight.requires_grad_(True)
            layer.weight.grad = None
        for batch in batches:
            loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.requires_grad:
                raise ValueError(
                    "collect_taylor's loss_fn must return a scalar loss tensor computed with gradients (not under "
                    f"torch.no_grad() or inference_mode, not .item()); got {type(loss).__name__}"
                    f"{'' if not isinstance(loss, torch.Tensor) else f' of shape {tuple(loss.shape)}, requires_grad={loss.requires_grad}'}"
                )
            loss.backward()
            unreached = [n for n, layer in layers.items() if layer.weight.grad is None]
            if unreached:
                raise ValueError(f"collect_taylor's loss does not depend on the weights of {unreached[:5]}: "
                                 "compute it from the model's output on the batch")
            with torch.no_grad():
                for n, layer in layers.items():
                    s = (layer.weight * layer.weight.grad).abs()
                    scores[n] = scores[n] + s if n in scores else s
                    layer.weight.grad = None
    finally:
        for n, layer in layers.items():
            layer.weight.requires_grad_(saved[n])
    if not scores:
        raise ValueError("collect_taylor got no calibration batches; pass at least one")
    return scores
