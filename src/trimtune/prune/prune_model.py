"""``prune(model, PruneConfig(...))``: importance → scope → granularity → masks, in place.

``amount`` follows ``torch.nn.utils.prune``: a float in [0, 1] is the fraction of the *surviving*
units to prune (so repeated pruning compounds on what remains), an int is a count. ``prune_to``
instead names the total sparsity to reach (what schedules use).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.config import ConfigError, check_choice
from ..core.layer_kinds import kind_class_for
from ..core.masks import set_canonical_mask
from ..core.state import wrapped
from ..core.targets import _HEAD_NAMES, TargetError, TargetSpec, select
from .granularity import NM, Columns, Element, Granularity, Rows, Units
from .heads import Heads
from .importance import Magnitude

GRANULARITIES = {"element": Element, "element-per-output": lambda: Element(per_output=True), "out": Rows, "rows": Rows, "in": Columns, "columns": Columns, "heads": Heads}


def _granularity(value) -> Granularity:
    if isinstance(value, Granularity):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d+:\d+", value):
        n, m = map(int, value.split(":"))
        return NM(n, m)
    if isinstance(value, str) and value in GRANULARITIES:
        return GRANULARITIES[value]()
    raise ConfigError(
        f"granularity must be one of {', '.join(map(repr, GRANULARITIES))}, an 'N:M' string or a Granularity "
        f"(Element, NM, Rows, Columns, Heads, Blocks), got {value!r}"
    )


def _check_amount(name: str, amount) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise ConfigError(f"{name} must be a fraction in [0, 1] or a non-negative count, got {amount!r}")
    if isinstance(amount, float) and not 0.0 <= amount <= 1.0:
        raise ConfigError(f"{name} must be a fraction in [0, 1] or a non-negative count, got {amount!r}")
    if isinstance(amount, int) and amount < 0:
        raise ConfigError(f"{name} as a count must be >= 0, got {amount!r}")


@dataclass
class PruneConfig:
    """amount: fraction of surviving units (float) or count (int) to prune per layer, or in total
    with ``scope="global"``. importance: a callable ``(name, layer) -> scores`` (Magnitude, Random,
    Taylor, Wanda, Movement). granularity: "element", "N:M" (e.g. "2:4"), "out"/"rows",
    "in"/"columns", "heads", or a Granularity object (``Blocks(r, c)``). scope: "layer" or "global".
    norm: how structures reduce element scores (default: the importance's own, L1 for most).
    targets: layers to prune (None: every linear/conv layer but the output head). protect: layers
    that must never be pruned (None: the output head); selecting one is an error. overrides:
    ``{regex: amount}`` per-layer amounts (pruned layer-wise even under global scope). force: allow
    pruning that empties a whole layer.
    """

    amount: float | int = 0.5
    importance: object = field(default_factory=Magnitude)
    granularity: object = "element"
    scope: str = "layer"
    norm: float | None = None
    targets: TargetSpec = None
    protect: TargetSpec = None
    overrides: dict = field(default_factory=dict)
    force: bool = False

    def __post_init__(self):
        _check_amount("amount", self.amount)
        self.granularity = _granularity(self.granularity)
        check_choice("scope", self.scope, ("layer", "global"))
        if not callable(self.importance):
            raise ConfigError(f"importance must be a callable (name, layer) -> scores, got {self.importance!r}")
        if isinstance(self.granularity, Element) and self.granularity.per_output and self.scope == "global":
            raise ConfigError("Element(per_output=True) compares within each output unit; use scope='layer'")
        if isinstance(self.granularity, NM) and self.scope == "global":
            raise ConfigError("N:M sparsity is fixed per group of M; use scope='layer' with N:M granularity")
        for pattern, amount in self.overrides.items():
            _check_amount(f"overrides[{pattern!r}]", amount)

    @property
    def reduction_norm(self) -> float:
        return self.norm if self.norm is not None else getattr(self.importance, "norm", 1)


def _is_head(model: nn.Module):
    output_layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return lambda name, module: module is output_layer or name.split(".")[-1] in _HEAD_NAMES


def _prunable(model: nn.Module):
    is_head = _is_head(model)
    return lambda name, module: (
        kind_class_for(module) is not None and not isinstance(module, nn.Embedding) and not is_head(name, module)
    )


def select_layers(model: nn.Module, config: PruneConfig) -> list[str]:
    names = select(model, config.targets if config.targets is not None else _prunable(model))
    protect = config.protect if config.protect is not None else _is_head(model)
    try:
        protected = set(select(model, protect))
    except TargetError:
        protected = set()
    clash = [n for n in names if n in protected]
    if clash:
        raise TargetError(f"targets select protected layers {clash[:5]}; remove them from targets or from protect")
    return names


def _amount_for(config: PruneConfig, units: Units):
    for pattern, amount in config.overrides.items():
        if any(re.search(rf"(?:^|\.)(?:{pattern})$", n) for n in units.layers):
            return amount
    return None


def _count(amount, alive: int, label: str) -> int:
    if isinstance(amount, int):
        if amount > alive:
            raise ConfigError(f"amount={amount} is larger than the {alive} surviving units of {label}")
        return amount
    return round(amount * alive)


def _check_not_emptied(units: Units, drop, force: bool, pool: list[Units] | None = None) -> None:
    if force or not len(drop) or len(drop) < int(units.alive.sum()):
        return
    if pool is None:
        raise ValueError(f"pruning would remove every unit of {units.label}; lower the amount, protect the layer, or pass force=True")
    safe, total = _safe_global_count(pool)
    raise ValueError(
        f"global pruning would remove every unit of {units.label}; at most {safe} of the {total} pooled units "
        f"(amount={safe / total:.4f}) can go without emptying a layer. Lower the amount, protect {units.label}, "
        "or pass force=True to allow it"
    )


def _safe_global_count(pool: list[Units]) -> tuple[int, int]:
    """The most units a global threshold can remove before some layer loses its last unit."""
    total = int(sum(int(u.alive.sum()) for u in pool))
    order = _merged(pool).select(total)  # every surviving unit, lowest score first
    owner = torch.cat([torch.full((len(u.scores),), i) for i, u in enumerate(pool)])[order]
    last_seen = [int((owner == i).nonzero().max()) for i in range(len(pool)) if bool((owner == i).any())]
    return min(last_seen), total


def _merged(pool: list[Units]) -> Units:
    return Units("global", torch.cat([u.scores.float() for u in pool]), torch.cat([u.alive for u in pool]), lambda idx: None)


def _global_drop(pool: list[Units], amount) -> list:
    """One threshold over all pooled units: the k lowest-scoring surviving units across layers."""
    alive = [u.alive for u in pool]
    total = int(sum(int(a.sum()) for a in alive))
    k = _count(amount, total, "the pooled layers")
    chosen = _merged(pool).select(k)
    drops, start = [], 0
    for u in pool:
        end = start + len(u.scores)
        drops.append(chosen[(chosen >= start) & (chosen < end)] - start)
        start = end
    return drops


def prune(model: nn.Module, config: PruneConfig, sparsity: float | None = None) -> nn.Module:
    """Prune ``model`` in place by ``config``. With ``sparsity`` (used by schedules), each unit set
    (or the global pool) is pruned until that fraction of its units is gone, ignoring ``amount``.

    All or nothing: every layer's new mask is worked out and checked before any is set, and layers
    wrapped for this call are unwrapped again if it fails."""
    names = select_layers(model, config)
    with wrapped(model, names) as layers:
        granularity = config.granularity
        if isinstance(granularity, NM):
            masks = {name: granularity.mask_for(name, layer, config.importance(name, layer)) for name, layer in layers.items()}
            for name, mask in masks.items():
                set_canonical_mask(layers[name], mask)
            return model
        plan = _plan(model, config, layers, sparsity)
        for units, drop in plan:
            if len(drop):
                units.zero(drop)
    return model


def _plan(model, config: PruneConfig, layers: dict, sparsity: float | None) -> list:
    """(units, indices to drop) for every unit set, checked: nothing is changed here."""
    sets = config.granularity.unit_sets(model, layers, config.importance, config.reduction_norm)
    plan, pooled = [], []
    for units in sets:
        override = _amount_for(config, units)
        if config.scope == "layer" or override is not None:
            amount = _to_reach(units, sparsity) if sparsity is not None else (config.amount if override is None else override)
            plan.append((units, units.select(_count(amount, int(units.alive.sum()), units.label))))
        else:
            pooled.append(units)
    for units, drop in plan:
        _check_not_emptied(units, drop, config.force)
    if pooled:
        amount = _pool_to_reach(pooled, sparsity) if sparsity is not None else config.amount
        drops = _global_drop(pooled, amount)
        for units, drop in zip(pooled, drops):
            _check_not_emptied(units, drop, config.force, pool=pooled)
        plan.extend(zip(pooled, drops))
    return plan


def _to_reach(units: Units, sparsity: float) -> int:
    return max(0, round(sparsity * len(units.alive)) - int((~units.alive).sum()))


def _pool_to_reach(pool: list[Units], sparsity: float) -> int:
    total = sum(len(u.alive) for u in pool)
    dead = sum(int((~u.alive).sum()) for u in pool)
    return max(0, round(sparsity * total) - dead)
