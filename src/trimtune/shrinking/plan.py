"""Which units of each group to remove: by group magnitude, or read off structured masks."""

from __future__ import annotations

import torch
from torch import nn

from ..core.layer_kinds import kind_class_for
from ..core.tuned_layer import TunedLayer
from .graph import Group, Member


def _canonical(module: nn.Module, masked: bool = True) -> torch.Tensor:
    shell = module.base_layer if isinstance(module, TunedLayer) else module
    weight = module.weight.detach()
    if masked and isinstance(module, TunedLayer) and module.weight_mask is not None:
        weight = weight * module.weight_mask
    return kind_class_for(shell)(shell).to_canonical(weight)


def _member_slices(model: nn.Module, group: Group, member: Member, tensor_fn) -> torch.Tensor | None:
    """The member's weight slices per group unit, shaped (size, -1); None for norm members."""
    if member.dim == "channel":
        return None
    weight = tensor_fn(model.get_submodule(member.module))
    if member.dim == "in":
        weight = weight.transpose(0, 1)
    idx = member.index_map(torch.arange(group.size))
    return weight.index_select(0, idx).reshape(group.size, -1)


def group_importance(model: nn.Module, group: Group, p: float = 2.0) -> torch.Tensor:
    """Sum over the group's weight slices (producers' rows, consumers' columns) of |w|^p."""
    score = torch.zeros(group.size)
    for member in group.members:
        slices = _member_slices(model, group, member, _canonical)
        if slices is not None:
            score += slices.float().abs().pow(p).sum(1).cpu()
    return score


def count_to_prune(size: int, ratio: float, round_to: int = 1) -> int:
    """Units to remove so that about ``ratio`` go and the kept count is a multiple of ``round_to``."""
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1): a group can never be emptied; got {ratio!r}")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to!r}")
    keep = max(round_to, round(size * (1 - ratio) / round_to) * round_to)
    return max(0, size - min(keep, size))


def choose_pruned(scores: torch.Tensor, ratio: float, round_to: int = 1) -> torch.Tensor:
    """The lowest-scoring units (ties broken by index, so the choice is deterministic)."""
    n = count_to_prune(len(scores), ratio, round_to)
    order = torch.sort(scores, stable=True).indices
    return order[:n].sort().values


def pruned_from_masks(model: nn.Module, group: Group) -> torch.Tensor:
    """Units whose slice is entirely zero in every masked member of one side: the producers' rows
    decide when any producer carries a mask (a unit nobody writes is dead, whatever its readers'
    masks say); otherwise the consumers' columns (a unit nobody reads)."""
    verdicts: dict[str, list[torch.Tensor]] = {"out": [], "in": []}
    for member in group.members:
        module = model.get_submodule(member.module)
        if member.dim not in verdicts or not isinstance(module, TunedLayer) or module.weight_mask is None:
            continue
        slices = _member_slices(
            model, group, member, lambda m: kind_class_for(m.base_layer)(m.base_layer).to_canonical(m.weight_mask)
        )
        verdicts[member.dim].append((slices == 0).all(dim=1))
    side = verdicts["out"] or verdicts["in"]
    if not side:
        return torch.zeros(0, dtype=torch.long)
    return torch.stack(side).all(0).nonzero().flatten()
