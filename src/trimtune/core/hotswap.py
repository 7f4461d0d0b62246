"""Hot-swap: replace a loaded adapter's tensors in place by another adapter's (peft's ``hotswap_adapter``).

The adapter keeps its name, its wrappers and its parameter objects; only their values change, so a
``torch.compile``d model runs the new adapter without recompiling. The new adapter must be of the same
method, on the same layers, with tensors of the same shapes (so the same ranks) and the same config
otherwise; everything is checked before the first tensor is copied.

A different scale (LoRA's alpha, ``alpha_pattern``, ``use_rslora``, or r through ``rank_pattern``):
peft writes the new scale into each layer (a float, so a compiled graph recompiles, unless
``prepare_model_for_compiled_hotswap`` made the scales tensors beforehand). trimtune folds the ratio
of new to old scale into the factor that carries it (LoRA's ``lora_B``, ``Delta.rescale``) instead:
the outputs are the new adapter's, nothing the graph read as a constant changes, and no preparation
is needed. The adapter's config stays the one it was loaded with, which with the rescaled factor is a
faithful description of what it computes (``save_adapter`` writes a file that reproduces it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .adapters import adapter_config
from .io.fingerprint import check_fingerprint
from .io.peft_files import (
    FINGERPRINT_KEY,
    WEIGHTS_FILE,
    adapter_tensors,
    fit_modules_to_save,
    layers_with,
    read_config,
    read_tensors,
)
from .io.peft_format import method_of, to_peft_config
from .registry import method_for_config
from .state import hosts, layers

# Fields whose effect the tensor check covers: which layers carry the adapter, and its ranks.
_SHAPE_FIELDS = {"targets", "r", "rank_pattern"}


def hotswap_adapter(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], name: str = "default",
                    config=None, check_base: bool = True) -> None:
    """Put the adapter at ``source`` into adapter ``name``'s tensors, in place.

    ``source`` is a PEFT adapter directory (what ``save_adapter`` or peft writes) or a mapping
    {peft key: tensor} as its ``adapter_model.safetensors`` holds; with a mapping, ``config`` describes
    it (default: the same config as adapter ``name``). ``check_base`` refuses a trimtune file made for
    another base model.
    """
    old = adapter_config(model, name)
    _check_not_merged(model, name)
    new, tensors = _read_source(model, source, config, old, check_base)
    _check_config(_as_saved(model, old, name), _as_saved(model, new, name), name)
    live = adapter_tensors(model, old, name)
    _check_tensors(live, tensors, name)
    factors = _scale_factors(model, old, new, name)
    with torch.no_grad():
        for key, target in live.items():
            target.copy_(tensors[key])
        for layer, factor in factors:
            layer.deltas[name].rescale(factor)


def _read_source(model, source, config, old, check_base: bool):
    if isinstance(source, Mapping):
        return (old if config is None else config), dict(source)
    path = Path(source)
    peft_config = read_config(path)
    new = config or fit_modules_to_save(model, method_of(peft_config).config.from_peft_dict(peft_config))
    tensors, metadata = read_tensors(path / WEIGHTS_FILE)
    if check_base and FINGERPRINT_KEY in metadata:
        check_fingerprint(json.loads(metadata[FINGERPRINT_KEY]), model, f"the adapter in {path}")
    return new, tensors


def _as_saved(model: nn.Module, config, name: str):
    """``config`` as its adapter file would give it back on this model: a default spelled out
    (IA3's feed-forward layers), so two configs compare by what they do, not how they were written."""
    saved = to_peft_config(model, config, name, layers_with(model, name))
    return fit_modules_to_save(model, method_of(saved).config.from_peft_dict(saved))


def _check_config(old, new, name: str) -> None:
    old_method, new_method = method_for_config(old), method_for_config(new)
    if old_method is not new_method:
        raise ValueError(f"cannot hot-swap a {new_method.name} adapter into adapter {name!r}, which is {old_method.name}: "
                         "a hot-swap replaces tensors of the same method only")
    free = _SHAPE_FIELDS | set(getattr(old, "swap_free_fields", ()))
    for field in dataclasses.fields(old):
        if field.name not in free and getattr(old, field.name) != getattr(new, field.name):
            raise ValueError(f"cannot hot-swap into adapter {name!r}: its {field.name} is {getattr(old, field.name)!r} but the "
                             f"new adapter's is {getattr(new, field.name)!r}; a hot-swap changes tensors only "
                             "(load it as another adapter with load_adapter instead)")


def _check_not_merged(model: nn.Module, name: str) -> None:
    if any(name in host.merged for _, host in hosts(model)):
        raise ValueError(f"adapter {name!r} is merged into the weights; unmerge(model) before hot-swapping it "
                         "(the merged change would otherwise stay in the base)")


def _check_tensors(live: dict[str, torch.Tensor], found: dict[str, torch.Tensor], name: str) -> None:
    missing, extra = sorted(set(live) - set(found)), sorted(set(found) - set(live))
    if missing or extra:
        raise ValueError(f"cannot hot-swap into adapter {name!r}: the new adapter targets other layers "
                         f"({len(missing)} tensor(s) missing, e.g. {missing[:3]}; {len(extra)} with no place here, "
                         f"e.g. {extra[:3]}); a hot-swap needs the same target layers")
    for key, target in live.items():
        if tuple(found[key].shape) != tuple(target.shape):
            raise ValueError(f"cannot hot-swap into adapter {name!r}: tensor {key} has shape {tuple(found[key].shape)} but "
                             f"the loaded one is {tuple(target.shape)} (another rank or layer width); a hot-swap needs the "
                             "same shapes")


def _scale_factors(model: nn.Module, old, new, name: str) -> list[tuple[nn.Module, float]]:
    """(layer, new scale / old scale) for each layer whose scale changes; refused where a delta cannot fold it."""
    if not hasattr(old, "scale_for"):
        return []
    factors = []
    for layer_name, layer in layers(model):
        if name not in layer.deltas:
            continue
        factor = new.scale_for(layer_name) / old.scale_for(layer_name)
        if factor != 1.0:
            if not layer.deltas[name].rescalable:
                raise ValueError(f"cannot hot-swap into adapter {name!r}: {type(layer.deltas[name]).__name__} at {layer_name} "
                                 f"cannot take the new adapter's scale (x{factor:g}); use the same alpha and r")
            factors.append((layer, factor))
    return factors
