"""Save a pruned model with its zeros compressed: bitmask + surviving values, in safetensors.

For every masked layer the file holds ``<key>.__bitmask`` (the mask packed 8 entries per byte)
and ``<key>.__values`` (the weight's surviving entries, in order); every other tensor of the state
dict is stored as is. The JSON metadata holds shapes, dtypes and the pruned-structure records, so
``load_sparse`` can rebuild masks and records on a freshly built model. No pickle anywhere; the
write is atomic (``io.atomic``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.io.atomic import write_safetensors
from ..core.io.safetensors_files import read_safetensors
from ..core.masks import pruned_structures
from ..core.state import wrapped
from ..core.tuned_layer import TunedLayer

FORMAT = "trimtune.sparse/1"


def _pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.detach().cpu().flatten().bool().numpy()))


def _unpack(bits: torch.Tensor, shape) -> torch.Tensor:
    count = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=count).astype(bool)).view(*shape)


def save_sparse(model: nn.Module, path: str | os.PathLike) -> dict[str, int]:
    """Write ``model`` to ``path``; returns ``{"sparse_bytes", "dense_bytes"}`` (file size vs the
    same state dict stored densely)."""
    path = Path(path)
    state = model.state_dict()
    tensors, layers, dense_bytes = {}, {}, 0
    masked = {f"{n}.weight": layer for n, layer in model.named_modules() if isinstance(layer, TunedLayer)}
    for key, tensor in state.items():
        if key.endswith("weight_mask"):
            continue
        tensor = tensor.detach().cpu().contiguous()
        dense_bytes += tensor.numel() * tensor.element_size()
        layer = masked.get(key)
        if layer is None or layer.weight_mask is None:
            tensors[key] = tensor
            continue
        keep = layer.weight_mask.detach().cpu().bool()
        tensors[f"{key}.__bitmask"] = _pack(keep)
        tensors[f"{key}.__values"] = tensor[keep].contiguous()
    for name, layer in model.named_modules():
        if isinstance(layer, TunedLayer) and (layer.weight_mask is not None or pruned_structures(layer)):
            weight = layer.weight
            layers[name] = {"shape": list(weight.shape), "masked": layer.weight_mask is not None, "pruned": pruned_structures(layer)}
    write_safetensors(path, tensors, {"format": FORMAT, "layers": json.dumps(layers)})
    return {"sparse_bytes": path.stat().st_size, "dense_bytes": dense_bytes}


@torch.no_grad()
def load_sparse(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a ``save_sparse`` file into a model of the same architecture (wrapping its pruned layers).
    Everything is checked against the model before anything changes: a file that does not fit
    leaves the model as it was."""
    metadata, tensors = _read(Path(path))
    layers = json.loads(metadata["layers"])
    state, masks = {}, {}
    for name, info in layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path} has pruned layer {name!r}, which this model does not have") from None
        shape = tuple(module.weight.shape)
        if shape != tuple(info["shape"]):
            raise ValueError(f"{path}: layer {name} is {tuple(info['shape'])} in the file but {shape} in the model")
        key = f"{name}.weight"
        if info["masked"]:
            keep = _unpack(tensors.pop(f"{key}.__bitmask"), info["shape"])
            weight = torch.zeros(info["shape"], dtype=tensors[f"{key}.__values"].dtype)
            weight[keep] = tensors.pop(f"{key}.__values")
            state[key], masks[name] = weight, keep
    state.update(tensors)
    own = set(model.state_dict())
    missing = [k for k in own - set(state) if not k.endswith("weight_mask")]
    unexpected = sorted(set(state) - own)
    if strict and (missing or unexpected):
        raise ValueError(f"{path} does not fit the model: missing {sorted(missing)[:5]}, unexpected {unexpected[:5]}")
    with wrapped(model, list(layers)) as wrappers:
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        for name, info in layers.items():
            if name in masks:
                wrappers[name].set_mask(masks[name])
            wrappers[name].__dict__["pruned_structures"] = {k: list(v) for k, v in info["pruned"].items()}
    return model


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors, metadata = read_safetensors(path, "sparse file written by save_sparse")
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a trimtune sparse file (format {metadata.get('format')!r}, expected {FORMAT!r})")
    return metadata, tensors
