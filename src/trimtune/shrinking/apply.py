"""Remove the chosen units of every group, all coupled slices at once, and record what was kept."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from ..core.layer_kinds import kind_class_for
from ..core.tuned_layer import TunedLayer
from .graph import Group
from ..core.slicing import slice_module


def _dim_size(module: nn.Module, dim: str) -> int:
    shell = module.base_layer if isinstance(module, TunedLayer) else module
    if dim == "channel":
        return int(module.weight.shape[0]) if module.weight is not None else int(module.running_mean.shape[0])
    out_features, in_features = kind_class_for(shell)(shell).weight_shape(module.weight)
    return int(out_features if dim == "out" else in_features)


def removals_for(groups: list[Group], pruned: dict[int, torch.Tensor]) -> dict[tuple[str, str], set[int]]:
    """Per (module, dim), every index to drop. Collected first, because a module can be a member of
    several groups along one dim (a conv reading a concatenation), each with its own offsets."""
    drop: dict[tuple[str, str], set[int]] = defaultdict(set)
    for g, idx in pruned.items():
        if len(idx) == 0:
            continue
        for member in groups[g].members:
            drop[(member.module, member.dim)].update(member.index_map(idx).tolist())
    return drop


def apply_removals(model: nn.Module, drop: dict[tuple[str, str], set[int]]) -> list[dict]:
    """Slice every (module, dim); return the history (module, dim, kept indices) for replay."""
    _check_sliceable(model, {name for name, _ in drop})
    history = []
    for (name, dim), removed in sorted(drop.items()):
        module = model.get_submodule(name)
        size = _dim_size(module, dim)
        keep = [i for i in range(size) if i not in removed]
        if not keep:
            raise ValueError(f"removing {len(removed)} units would empty {name} ({dim}); keep at least one")
        slice_module(module, dim, torch.tensor(keep))
        history.append({"module": name, "dim": dim, "size": size, "keep": keep})
    return history


def _check_sliceable(model: nn.Module, names: set[str]) -> None:
    """Refuse before cutting anything, so a refusal never leaves a half-shrunk model."""
    for name in sorted(names):
        module = model.get_submodule(name)
        for adapter, delta in getattr(module, "deltas", {}).items():
            if not delta.sliceable:
                raise ValueError(
                    f"{name} carries adapter {adapter!r} ({type(delta).__name__}), which cannot be sliced; "
                    "merge or delete it before shrinking (nothing was changed)"
                )


def replay(model: nn.Module, history: list[dict]) -> None:
    """Apply a recorded shrink to a fresh copy of the original model."""
    for step in history:
        module = model.get_submodule(step["module"])
        size = _dim_size(module, step["dim"])
        if size != step["size"]:
            raise ValueError(
                f"the shrink history does not fit this model: {step['module']} ({step['dim']}) has {size} units, "
                f"the history was recorded on {step['size']}"
            )
        slice_module(module, step["dim"], torch.tensor(step["keep"]))
