"""Regularisation-based pruning: a loss term that drives weights (L1) or whole structures (group
lasso) towards zero during training, then a threshold step (``prune_below``) that turns what
reached ~zero into masks. L0 regularisation with hard-concrete gates lives in ``gates.py``
(``GateConfig(kind="hard_concrete")``, ``l0_penalty``, ``gates_to_masks``).

    train(model, data, callbacks=[Regularizer(group_lasso_penalty, 1e-3, granularity="out")])
    prune_below(model, 1e-3, granularity="out")
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.state import wrap
from .prune_model import PruneConfig, _check_not_emptied, select_layers


def _weight(name, layer) -> torch.Tensor:
    """|effective weight|, differentiable (the penalty's gradient flows into the weight)."""
    weight = layer.weight if layer.weight_mask is None else layer.weight * layer.weight_mask
    return weight.abs()


def _unit_sets(model, granularity, targets, importance, norm):
    config = PruneConfig(granularity=granularity, targets=targets, importance=importance)
    layers = {n: wrap(model, n) for n in select_layers(model, config)}
    return config.granularity.unit_sets(model, layers, importance, norm)


def l1_penalty(model: nn.Module, targets=None) -> torch.Tensor:
    """Σ |w| over the target layers' weights."""
    config = PruneConfig(targets=targets)
    return sum(_weight(n, wrap(model, n)).sum() for n in select_layers(model, config))


def group_lasso_penalty(model: nn.Module, granularity="out", targets=None) -> torch.Tensor:
    """Σ over structures (rows "out", input channels "in", "heads", Blocks) of ‖w_structure‖₂."""
    return sum(units.scores.sum() for units in _unit_sets(model, granularity, targets, _weight, 2))


@torch.no_grad()
def prune_below(model: nn.Module, threshold: float, granularity="element", targets=None, norm: float = 2, force: bool = False) -> nn.Module:
    """Mask every unit (entry or structure) whose weight norm is <= ``threshold``."""
    for units in _unit_sets(model, granularity, targets, _weight, norm):
        drop = (units.alive & (units.scores <= threshold)).nonzero().flatten()
        _check_not_emptied(units, drop, force)
        if len(drop):
            units.zero(drop)
    return model


class Regularizer:
    """``trimtune.train`` callback adding ``strength · penalty(model, **kwargs)`` to the loss."""

    def __init__(self, penalty: Callable[..., torch.Tensor], strength: float, **kwargs):
        self.penalty, self.strength, self.kwargs = penalty, strength, kwargs

    def loss_term(self, ctx) -> torch.Tensor:
        return self.strength * self.penalty(ctx.model, **self.kwargs)
