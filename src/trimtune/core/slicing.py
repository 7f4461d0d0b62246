"""Physically remove output or input units from one module, keeping everything attached consistent.

``slice_module(module, "out" | "in", keep)`` keeps the units ``keep`` (sorted indices) of a layer:
its weight and bias, its pruning mask, every delta it carries (LoRA's B rows, IA3's vector, ...),
and the hyper-parameters that record its size (in_features, out_channels, nf, ...), so the module
still works and still prints its true shape. Norm layers are sliced with ``dim="channel"``.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer_kinds import kind_class_for
from .masks import reindex_pruned
from .tuned_layer import TunedLayer

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _slice_param(owner: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    tensor = getattr(owner, name, None)
    if tensor is None:
        return
    sliced = tensor.detach().index_select(dim, keep.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(owner, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
    else:
        owner._buffers[name] = sliced


def _set_size_attributes(shell: nn.Module, dim: str, size: int) -> None:
    """Record the new width on the module object so repr/config/reload see the true shape."""
    names = {
        "out": ("out_features", "out_channels", "embedding_dim", "nf"),
        "in": ("in_features", "in_channels", "num_embeddings"),
    }[dim]
    for attr in names:
        if hasattr(shell, attr):
            setattr(shell, attr, size)


def _slice_linear_like(owner: nn.Module, shell: nn.Module, dim: str, keep: torch.Tensor) -> None:
    kind = kind_class_for(shell)
    axis = kind.out_dim if dim == "out" else kind.in_dim
    _slice_param(owner, "weight", axis, keep)
    if dim == "out":
        _slice_param(owner, "bias", 0, keep)
    if isinstance(owner, TunedLayer):
        _slice_param(owner, "weight_mask", axis, keep)
        for delta in owner.deltas.values():
            delta.slice_(dim, keep)
        reindex_pruned(owner, dim, keep)
    _set_size_attributes(shell, dim, len(keep))


def _slice_depthwise(module: nn.Module, keep: torch.Tensor) -> None:
    """A depthwise conv's output channel i reads only input channel i: both go together."""
    owner = module
    shell = module.base_layer if isinstance(module, TunedLayer) else module
    _slice_param(owner, "weight", 0, keep)
    _slice_param(owner, "bias", 0, keep)
    if isinstance(owner, TunedLayer):
        _slice_param(owner, "weight_mask", 0, keep)
        for delta in owner.deltas.values():
            delta.slice_("out", keep)
    shell.in_channels = shell.out_channels = shell.groups = len(keep)


def _slice_norm(norm: nn.Module, keep: torch.Tensor) -> None:
    if isinstance(norm, nn.GroupNorm):
        raise ValueError("GroupNorm channels are coupled by group; pruning them is not supported")
    for name in ("weight", "bias", "running_mean", "running_var"):
        _slice_param(norm, name, 0, keep)
    if isinstance(norm, nn.LayerNorm):
        norm.normalized_shape = (len(keep),)
    else:
        norm.num_features = len(keep)


def is_depthwise(module: nn.Module) -> bool:
    shell = module.base_layer if isinstance(module, TunedLayer) else module
    return isinstance(shell, nn.modules.conv._ConvNd) and shell.groups > 1 and shell.groups == shell.in_channels == shell.out_channels


def slice_module(module: nn.Module, dim: str, keep: torch.Tensor) -> None:
    keep = torch.as_tensor(keep, dtype=torch.long)
    if dim == "channel":
        if is_depthwise(module):
            _slice_depthwise(module, keep)
        elif isinstance(module, _NORMS):
            _slice_norm(module, keep)
        else:
            raise TypeError(f"cannot slice channels of {type(module).__name__}")
        return
    if dim not in ("out", "in"):
        raise ValueError(f"dim must be 'out', 'in' or 'channel', got {dim!r}")
    shell = module.base_layer if isinstance(module, TunedLayer) else module
    if kind_class_for(shell) is None:
        raise TypeError(f"cannot slice {type(shell).__name__}: not a linear, convolution or embedding layer")
    if isinstance(shell, nn.modules.conv._ConvNd) and shell.groups != 1:
        raise ValueError(f"cannot slice one side of a grouped convolution (groups={shell.groups})")
    _slice_linear_like(module, shell, dim, keep)
