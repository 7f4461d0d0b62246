"""Choosing bare parameters a method adapts (``target_parameters``, peft's field of that name).

An entry names a parameter by its full dotted name or a dotted suffix of it, as peft matches
(``"experts.gate_up_proj"`` selects ``model.layers.N.mlp.experts.gate_up_proj`` in every block). Every
entry is checked before anything changes: one that names a module, a buffer, nothing, or a parameter
that is not a 2-D (out, in) or 3-D (experts, ...) weight is a ``ConfigError`` naming the entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from torch import nn

from .config import ConfigError
from .parameter_host import ParameterHost
from .tuned_layer import TunedLayer

FIELD = "target_parameters"


def select_parameters(model: nn.Module, entries: Sequence[str]) -> dict[str, list[str]]:
    """{owner module name: [its parameter names]} that ``entries`` select, in the model's order."""
    found = list(_parameters(model))
    chosen: dict[str, list[str]] = {}
    for entry in entries:
        matches = [(owner, name, param) for owner, name, param in found if _matches(_full(owner, name), entry)]
        if not matches:
            raise ConfigError(f"{FIELD} entry {entry!r} {_why_nothing(model, entry, found)}")
        for owner, name, param in matches:
            _check_target(model, entry, owner, name, param)
            chosen.setdefault(owner, [])
            if name not in chosen[owner]:
                chosen[owner].append(name)
    return {owner: [n for n, _ in _own_parameters(model.get_submodule(owner)) if n in names] for owner, names in chosen.items()}


def _parameters(model: nn.Module) -> Iterator[tuple[str, str, nn.Parameter]]:
    """(owner name, parameter name, parameter) for every base parameter, trimtune's own containers skipped."""
    for owner, module in model.named_modules():
        if ".deltas." in f".{owner}." or ".copies." in f".{owner}.":
            continue
        for name, param in _own_parameters(module):
            yield owner, name, param


def _own_parameters(module: nn.Module):
    return [(n, p) for n, p in module._parameters.items() if p is not None]


def _full(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def _matches(full_name: str, entry: str) -> bool:
    return full_name == entry or full_name.endswith("." + entry)


def _check_target(model: nn.Module, entry: str, owner: str, name: str, param: nn.Parameter) -> None:
    module = model.get_submodule(owner) if owner else model
    where = f"{FIELD} entry {entry!r} selects {_full(owner, name)}"
    if not owner:
        raise ConfigError(f"{where}, a parameter of the model object itself; only a parameter of a submodule can be adapted")
    if isinstance(module, TunedLayer):
        raise ConfigError(f"{where}, the weight of a layer that is a target (targets) already; adapt the layer "
                          "with targets or its parameter with target_parameters, not both")
    if param.dim() not in (2, 3) or not param.is_floating_point():
        raise ConfigError(f"{where} of shape {tuple(param.shape)} ({param.dtype}); allowed: floating-point parameters "
                          "of 2 dimensions (out, in) or 3 (experts, out, in) or (experts, in, out)")
    if not isinstance(module, ParameterHost) and type(module).forward is nn.Module.forward:
        raise ConfigError(f"{where}, but {type(module).__name__} has no forward to run with the adapted value")


def _why_nothing(model: nn.Module, entry: str, found) -> str:
    modules = [n for n, _ in model.named_modules() if n and _matches(n, entry)]
    if modules:
        own = [_full(modules[0], n) for n, _ in _own_parameters(model.get_submodule(modules[0]))]
        return (f"names a module ({modules[0]}), not a parameter; name one of its parameters: "
                f"{', '.join(own) or '(it has none of its own)'}")
    buffers = [n for n, _ in model.named_buffers() if _matches(n, entry)]
    if buffers:
        return f"names a buffer ({buffers[0]}), not a parameter: buffers are not trained"
    return f"matches no parameter of the model. {_candidates(found)}"


def _candidates(found, limit: int = 20) -> str:
    # One entry per position (block numbers folded to N), 2-D and 3-D parameters only: what can be adapted.
    shapes: dict[str, tuple] = {}
    for owner, name, param in found:
        if owner and param.dim() in (2, 3):
            shapes.setdefault(re.sub(r"\.\d+(?=\.|$)", ".N", _full(owner, name)), tuple(param.shape))
    listed = "; ".join(f"{n} {list(s)}" for n, s in list(shapes.items())[:limit])
    more = f" (and {len(shapes) - limit} more)" if len(shapes) > limit else ""
    return f"Parameters it could name (N: any block number): {listed or 'none'}{more}"
