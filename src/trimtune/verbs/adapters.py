"""The verbs that fold adapters into weights and back, take trimtune out, and count parameters."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

from torch import nn

from ..core.four_bit import logical_numel
from ..core.modules_to_save import ModuleCopies
from ..core.parameter_host import ParameterHost
from ..core.plain_four_bit import ABSMAX, is_plain_4bit
from ..core.state import forget_state, hosts, layers, replace_module, state_of


def merge(model: nn.Module, adapters: Iterable[str] | None = None, keep_sparsity: bool = True) -> nn.Module:
    """Fold the active (or named) adapters into the base weights. With a pruning mask on a layer,
    the merged change is masked too (``keep_sparsity``), so a pruned model stays sparse."""
    names = list(state_of(model).active if adapters is None else adapters)
    carriers = [(n, host) for n, host in hosts(model) if any(host.folds(a) for a in names)]  # wrappers, LN tuning's norms
    if not carriers:
        warnings.warn("merge: nothing to merge: the model has no active adapter that changes weights "
                      "(prompt/prefix adapters are inputs, not weights)", stacklevel=2)
        return model
    for host_name, host in carriers:
        already = [n for n in names if host.folds(n) and n in host.merged]
        if already:
            raise ValueError(f"adapter {already[0]!r} is already merged (at {host_name}); unmerge first")
    dropped = 0.0
    for _, host in carriers:
        dropped = max(dropped, host.merge([n for n in names if host.folds(n)], keep_sparsity=keep_sparsity))
    _warn_if_outputs_change(dropped)
    return model


def _warn_if_outputs_change(dropped: float) -> None:
    if dropped > 1e-6:
        warnings.warn(
            f"merging kept the pruned layers sparse, which drops the part of a low-rank adapter's change "
            f"on pruned entries (up to {dropped:.0%} of its norm in a layer): the adapter was trained "
            "unmasked, so the merged model's outputs differ from the trained model's. To keep the outputs "
            "(and make those layers dense), merge with keep_sparsity=False (CLI: merge/export --dense); to train "
            "LoRA masked so that the sparse merge is exact, use LoraConfig(follow_mask=True)",
            stacklevel=3,
        )


def unmerge(model: nn.Module) -> nn.Module:
    merged = [host for _, host in hosts(model) if host.merged]
    if not merged:
        raise ValueError("no adapter is merged into this model")
    for host in merged:
        host.unmerge()
    return model


def unload(model: nn.Module, merge_adapters: bool = False) -> nn.Module:
    """Return the plain model: original layer classes, trimtune removed. With ``merge_adapters``
    the active adapters are folded in first (and trained head copies kept); otherwise the base
    weights are restored exactly as they were. Input deltas (prompts, prefixes) are removed either way."""
    dropped = 0.0
    for name, layer in list(layers(model)):
        if merge_adapters:
            pending = [n for n in layer.active if n not in layer.merged]
            if pending:
                dropped = max(dropped, layer.merge(pending))
        elif layer.merged:
            layer.unmerge()
        if layer.weight_mask is not None:  # a plain layer has no mask: keep the pruning in its weight
            layer.weight.data.mul_(layer.weight_mask)
        replace_module(model, name, layer.restore_base())
    for name, host in [(n, h) for n, h in hosts(model) if isinstance(h, ParameterHost)]:
        pending = [n for n in host.active if n not in host.merged]
        if merge_adapters and pending:
            host.merge(pending)
        elif not merge_adapters and host.merged:
            host.unmerge()
        replace_module(model, name, host.restore_base())
    for name, module in list(model.named_modules()):
        if isinstance(module, ModuleCopies):
            if module.merged and not merge_adapters:  # LN tuning's norms hold the trained values: put the base back
                module.unmerge()
            keep = module.copies[module.active[0]] if (merge_adapters and module.active) else module.original
            replace_module(model, name, keep)
    for name, host in list(hosts(model)):  # the rest (input deltas) cannot fold into weights: removed
        host.detach()
        parent_name, _, child = name.rpartition(".")
        delattr(model.get_submodule(parent_name) if parent_name else model, child)
    forget_state(model)
    _warn_if_outputs_change(dropped)
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    stored_plain = plain_4bit_counts(model)
    for param in model.parameters():
        count = stored_plain.get(id(param), logical_numel(param))  # a 4-bit weight counts its parameters, not its bytes
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def plain_4bit_counts(model: nn.Module) -> dict[int, int]:
    """{id(parameter): count} for 4-bit bases stored as plain tensors (for FSDP2): the packed codes
    count the weights they stand for, the block scales nothing (quantisation state, as in a Params4bit)."""
    counts = {}
    for _, layer in layers(model):
        if is_plain_4bit(layer):
            counts[id(layer.weight)] = math.prod(layer.quant_template.shape)
            counts[id(getattr(layer, ABSMAX))] = 0
    return counts


def print_trainable_parameters(model: nn.Module) -> None:
    trainable, total = trainable_parameters(model)
    print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / max(total, 1):.4f}")
