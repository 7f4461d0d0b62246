"""Masks on the wrapper layers: read/write them in canonical layout, record pruned structures,
fold them in (``make_permanent``), drop them (``remove_masks``), and keep them enforced through
optimizer steps (``keep_pruned``).

The element mask is ``TunedLayer.weight_mask`` (the forward computes ``W ⊙ M``). Structured pruning
also records *which* output units (``"out"``), input units (``"in"``) and heads (``"heads"``) it
removed, as sorted index lists in ``pruned_structures(layer)``; the shrink step reads these to cut
the structures out physically. The record is a plain attribute, so ``copy.deepcopy`` keeps it and
``io.sparse`` saves it.
"""

from __future__ import annotations

import torch
from torch import nn

from .tuned_layer import TunedLayer

_RECORD = "pruned_structures"


def canonical_mask(layer: TunedLayer) -> torch.Tensor:
    """The layer's mask in canonical layout (ones when it has none)."""
    mask = layer.weight_mask if layer.weight_mask is not None else torch.ones_like(layer.weight, dtype=torch.bool)
    return layer.kind.to_canonical(mask)


def set_canonical_mask(layer: TunedLayer, mask: torch.Tensor) -> None:
    layer.set_mask(layer.kind.from_canonical(mask).contiguous())


def pruned_structures(layer: TunedLayer) -> dict[str, list[int]]:
    """``{"out": [...], "in": [...], "heads": [...]}``: structures pruned so far (only keys in use)."""
    return layer.__dict__.setdefault(_RECORD, {})


def record_pruned(layer: TunedLayer, key: str, indices) -> None:
    record = pruned_structures(layer)
    record[key] = sorted(set(record.get(key, [])) | {int(i) for i in indices})


def reindex_pruned(layer: TunedLayer, dim: str, keep) -> None:
    """After a shrink keeps units ``keep`` of ``dim``, restate the record in the new positions.
    Units that were removed leave the record; head records are dropped (rows moved under them)."""
    record = layer.__dict__.get(_RECORD)
    if not record:
        return
    position = {int(old): new for new, old in enumerate(keep.tolist())}
    if dim in record:
        record[dim] = sorted(position[i] for i in record[dim] if i in position)
    if dim == "out":
        record.pop("heads", None)


def masked_layers(model: nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, TunedLayer) and module.weight_mask is not None:
            yield name, module


def sparsity(model: nn.Module) -> float:
    """Fraction of masked-out entries over all masked layers (0 when nothing is masked)."""
    zeros = total = 0
    for _, layer in masked_layers(model):
        zeros += int((layer.weight_mask == 0).sum())
        total += layer.weight_mask.numel()
    return zeros / total if total else 0.0


@torch.no_grad()
def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight (``W ← W ⊙ M``) and drop the mask; structure records stay."""
    for _, layer in masked_layers(model):
        if layer.merged:
            raise ValueError(f"{layer.describe()} has merged adapters {list(layer.merged)}; unmerge before folding the mask")
        layer.weight.mul_(layer.weight_mask)
        layer.set_mask(None)
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Undo pruning: drop masks and records; the weights under the mask come back unchanged."""
    for _, layer in list(masked_layers(model)):
        layer.set_mask(None)
    for _, module in model.named_modules():
        if isinstance(module, TunedLayer):
            module.__dict__.pop(_RECORD, None)
    return model


@torch.no_grad()
def enforce_masks(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Zero pruned weight entries and, if given, their optimizer state (momentum, Adam moments),
    so neither weight decay nor stale moments can bring them back."""
    for _, layer in masked_layers(model):
        layer.weight.mul_(layer.weight_mask)
        if optimizer is None:
            continue
        for value in optimizer.state.get(layer.weight, {}).values():
            if torch.is_tensor(value) and value.shape == layer.weight.shape:
                value.mul_(layer.weight_mask)


def keep_pruned(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Masked fine-tuning with the base weights trained: after every ``optimizer.step()`` the pruned
    entries and their optimizer state are zeroed. Returns the hook handle (``.remove()`` to stop)."""
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: enforce_masks(model, opt))
