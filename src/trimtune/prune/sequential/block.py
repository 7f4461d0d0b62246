"""Prune one transformer block from its recorded calibration calls.

Every Linear (and GPT-2 Conv1D) in the block is wrapped and hooked at once; one pass over the
calls collects what the method needs (input norms for Wanda, Hessians for SparseGPT, nothing for
magnitude), then each layer is pruned. The caller reruns the pruned block to make the next inputs.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ...core.layer_kinds import kind_class_for
from ...core.state import unwrap_bare, unwrapped_names, wrap, wrapped
from ...core.tuned_layer import TunedLayer
from ..prune_model import PruneConfig, prune
from ..calibration import collect_input_norms
from ..early_stop import stopping_after
from ..granularity import NM, Element
from ..importance import Magnitude, Wanda
from ..owl import outlier_ratio
from ..sparsegpt import Hessian, sparsegpt_layer
from .capture import BlockCalls, token_rows
from .config import SequentialConfig


def linear_names(block: nn.Module) -> list[str]:
    """The block's prunable layers (Linear, Conv1D), wrapped or not, in module order."""
    names = []
    for name, module in block.named_modules():
        base = module.base_layer if isinstance(module, TunedLayer) else module
        if name and not isinstance(base, nn.Embedding) and kind_class_for(base) is not None and ".deltas." not in f".{name}.":
            names.append(name)
    return names


def _only(name: str):
    return lambda candidate, module: candidate == name


@torch.no_grad()
def _hessians(block: nn.Module, layers: dict[str, TunedLayer], calls: BlockCalls) -> dict[str, Hessian]:
    """One Hessian per distinct input: q/k/v (and gate/up) receive the same tensor object, so they
    share one accumulator instead of each paying for the same XᵀX (the grouping is read on the first
    call, where references to the inputs are held so no address can be reused within the forward)."""
    owner: dict[str, str] = {}
    seen: list[tuple[torch.Tensor, str]] = []
    hessians: dict[str, Hessian] = {}

    def hook_for(name, layer):
        def hook(module, args):
            x = args[0]
            if name not in owner:
                owner[name] = next((n for t, n in seen if t is x), name)
                seen.append((x, name))
                if owner[name] == name:
                    hessians[name] = Hessian(layer.kind.to_canonical(layer.weight).shape[1])
            if owner[name] == name:
                hessians[name].add(token_rows(x))  # padding never enters H

        return hook

    handles = [layer.register_forward_pre_hook(hook_for(n, layer)) for n, layer in layers.items()]
    try:
        with stopping_after(layers.values()) as run:
            for call in calls:
                run(lambda: block(**call))
                seen.clear()
    finally:
        for h in handles:
            h.remove()
    # a layer the forward never reached keeps an empty accumulator: sparsegpt_layer names it
    return {n: hessians[owner[n]] if n in owner else Hessian(layers[n].kind.to_canonical(layers[n].weight).shape[1]) for n in layers}


def wanda_norms(block: nn.Module, names: list[str], calls: BlockCalls) -> dict[str, torch.Tensor]:
    return collect_input_norms(block, calls, targets=lambda n, m: n in names, rows=token_rows)


def block_outlier_ratio(block: nn.Module, calls: BlockCalls, m: float) -> float:
    """OWL's statistic for a dense block: share of its Wanda scores above m × their mean. A statistic
    changes nothing: the layers it wrapped to score are unwrapped again (a later refusal, such as an
    OWL lambda too large for the ratios, leaves the model as it was)."""
    names = linear_names(block)
    fresh = unwrapped_names(block, names)
    try:
        wanda = Wanda(wanda_norms(block, names, calls))
        return outlier_ratio([wanda(n, wrap(block, n)) for n in names], m)
    finally:
        unwrap_bare(block, fresh)


def prune_block(block: nn.Module, calls: BlockCalls, config: SequentialConfig, sparsity: float | None, prefix: str = "") -> None:
    """Prune every layer of ``block`` at ``sparsity`` (ignored for N:M) by ``config.method``."""
    names = linear_names(block)
    with _whole_or_not_at_all(block, names, keep_weights=config.method == "sparsegpt") as layers:
        _prune_layers(block, layers, calls, config, sparsity, prefix)


@contextlib.contextmanager
def _whole_or_not_at_all(block: nn.Module, names: list[str], keep_weights: bool):
    """SparseGPT writes each layer's repaired weight and mask as it goes, and a later layer can still
    fail (a singular Hessian): then every layer gets its weight and mask back and loses the wrapper this
    call gave it, so a block is pruned whole or not at all. Wanda and magnitude change only masks."""
    with wrapped(block, names) as layers:
        saved = {n: (layer.weight.detach().clone() if keep_weights else None, layer.weight_mask) for n, layer in layers.items()}
        try:
            yield layers
        except BaseException:
            with torch.no_grad():
                for name, layer in layers.items():
                    weight, mask = saved[name]
                    if weight is not None:
                        layer.weight.copy_(weight)
                    layer.set_mask(mask)
            raise


def _prune_layers(block: nn.Module, layers: dict[str, TunedLayer], calls: BlockCalls, config: SequentialConfig,
                  sparsity: float | None, prefix: str) -> None:
    names = list(layers)
    n_m = config.nm
    if config.method == "sparsegpt":
        hessians = _hessians(block, layers, calls)
        n, m = n_m or (0, 0)
        for name, layer in layers.items():
            hessian = hessians.pop(name)
            if any(h is hessian for h in hessians.values()):
                hessian = hessian.copy()  # a later layer shares it: the kernel consumes its own copy
            sparsegpt_layer(layer, hessian, None if n_m else sparsity, n, m, config.blocksize, config.percdamp, f"{prefix}{name}",
                            selection=config.selection)
        return
    if config.method == "wanda":
        importance, per_output = Wanda(wanda_norms(block, names, calls)), True
    else:
        importance, per_output = Magnitude(), False
    granularity = NM(*n_m) if n_m else Element(per_output=per_output)
    for name in names:
        prune(block, PruneConfig(amount=0.0 if n_m else float(sparsity), importance=importance, granularity=granularity, targets=_only(name)))
