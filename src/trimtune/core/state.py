"""Per-model bookkeeping and the wrapping step every method shares.

``state_of(model)`` is the ``TuneState`` kept on the model (which adapters, in which order, which
are active, the training callbacks a method installed); ``wrap(model, name)`` puts the one wrapper
(``TunedLayer``) in place of a layer, once. ``hosts`` / ``layers`` walk what carries adapters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from torch import nn

from .adapter_host import AdapterHost
from .tuned_layer import TunedLayer

STATE_ATTR = "_trimtune"


@dataclass
class TuneState:
    adapters: dict[str, object] = field(default_factory=dict)  # name -> config, in the order applied
    active: list[str] = field(default_factory=list)
    # Training callbacks a method needs run every step (AdaLoRA's rank update); trimtune.train runs them.
    callbacks: dict[str, object] = field(default_factory=dict)


def state_of(model: nn.Module) -> TuneState:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        state = TuneState()
        object.__setattr__(model, STATE_ATTR, state)
    return state


def forget_state(model: nn.Module) -> None:
    if hasattr(model, STATE_ATTR):
        object.__delattr__(model, STATE_ATTR)


def hosts(model: nn.Module) -> Iterator[tuple[str, AdapterHost]]:
    for name, module in model.named_modules():
        if isinstance(module, AdapterHost):
            yield name, module


def layers(model: nn.Module) -> Iterator[tuple[str, TunedLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, TunedLayer):
            yield name, module


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def wrap(model: nn.Module, name: str) -> TunedLayer:
    """The TunedLayer at ``name``, wrapping the module there first if needed."""
    module = model.get_submodule(name)
    if isinstance(module, TunedLayer):
        return module
    layer = TunedLayer(module).train(module.training)  # new modules join in the mode of what they replace
    layer.module_name = name  # for methods that treat layers differently by name (IA3's feed-forward set)
    replace_module(model, name, layer)
    return layer


@contextlib.contextmanager
def wrapped(model: nn.Module, names: Iterable[str]):
    """``{name: TunedLayer}`` for the block; if the block fails, the layers it newly wrapped are put
    back as they were (a failed verb leaves no wrapper behind)."""
    names = list(names)
    new = unwrapped_names(model, names)
    layers = {n: wrap(model, n) for n in names}
    try:
        yield layers
    except BaseException:
        unwrap_bare(model, new)
        raise


def unwrapped_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    return [n for n in names if not isinstance(model.get_submodule(n), TunedLayer)]


def unwrap_bare(model: nn.Module, names: Iterable[str]) -> None:
    """Put back the base layer of each wrapper in ``names`` that carries nothing (no delta, no mask)."""
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, TunedLayer) and not layer.deltas and layer.weight_mask is None:
            replace_module(model, name, layer.restore_base())
