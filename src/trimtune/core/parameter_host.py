"""The wrapper for bare parameters: adapters on a module's own ``nn.Parameter`` rather than on a layer.

Some weights are no layer of their own: transformers stores a Mixtral or Qwen2-MoE block's experts as
two 3-D parameters (``gate_up_proj``: experts × 2·ffn × hidden, ``down_proj``: experts × hidden × ffn)
that the experts module indexes in its forward. ``ParameterHost`` stands where such a module stood.
Like ``TunedLayer`` it takes over the module's parameters and buffers under their original state-dict
keys (``...experts.gate_up_proj`` stays ``...experts.gate_up_proj``) and keeps the module itself,
unregistered, for its forward. Each call lends that forward the targeted parameters with the active
deltas added (``W + Σ δ.added_to``), so the module computes with the adapted weights while its code
stays unchanged; outside a call the parameters hold the base values (reading ``experts.gate_up_proj``
directly gives the base, as in peft). Several parameters of one module share one host; each adapter
has one delta per parameter it targets (``deltas[adapter][parameter]``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

from .adapter_host import DeltaHost, take_over_tensors
from .state import replace_module


class ParameterHost(DeltaHost):
    def __init__(self, base: nn.Module):
        super().__init__()
        take_over_tensors(self, base)
        for name, child in base.named_children():  # shared with the module, so their keys stay too
            self.add_module(name, child)
        self.deltas = nn.ModuleDict()  # adapter -> ModuleDict(parameter name -> delta)
        self.active: tuple[str, ...] = ()
        self.merged: tuple[str, ...] = ()
        self.module_name = ""
        self._refresh()
        # Set last: from here on, names the host lacks read through to the module (see __getattr__).
        object.__setattr__(self, "base_module", base)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # the module's own attributes (num_experts, is_transposed, config) read through
            base = self.__dict__.get("base_module")
            if base is None:
                raise
            return getattr(base, name)

    def train(self, mode: bool = True):
        super().train(mode)
        self.base_module.train(mode)  # its forward may read self.training; it is no registered child
        return self

    # ---- the forward: the module's own, with the adapted parameters lent to it ----
    def forward(self, *args, **kwargs):
        parameters = dict(self._parameters)
        for name, deltas in self._live.items():
            for delta in deltas:
                parameters[name] = delta.added_to(parameters[name])
        # Its children too: one wrapped since (a TunedLayer target) is replaced here, not in the module.
        children = {name: child for name, child in self._modules.items() if name != "deltas"}
        with _lent(self.base_module, parameters, dict(self._buffers), children):
            return self.base_module(*args, **kwargs)

    def _refresh(self) -> None:
        """Cache, per parameter, the active deltas that are not merged into it."""
        live: dict[str, list] = {}
        for adapter in self.active:
            if adapter not in self.merged:
                for name, delta in self.deltas[adapter].items():
                    live.setdefault(name, []).append(delta)
        object.__setattr__(self, "_live", live)

    # ---- managing adapters ----
    def add_deltas(self, adapter: str, deltas: dict[str, nn.Module]) -> None:
        if adapter in self.deltas:
            raise ValueError(f"{self.describe()} already has an adapter named {adapter!r}; pick another name or delete it first")
        missing = [n for n in deltas if not isinstance(self._parameters.get(n), nn.Parameter)]
        if missing:
            raise ValueError(f"{self.describe()} has no parameter {missing[0]!r}")
        self.deltas[adapter] = nn.ModuleDict(deltas).train(self.training)
        self._refresh()

    def targeted(self, adapter: str) -> list[str]:
        """The parameters adapter ``adapter`` changes here, in the module's registration order."""
        return [n for n in self._parameters if n in self.deltas[adapter]]

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.deltas[name].parameters())

    def peft_tensors(self, name: str, path: str) -> dict[str, torch.Tensor]:
        # peft nests one wrapper per targeted parameter, the last one registered outermost: the k-th of n
        # parameters sits n-1-k ``base_layer`` levels down, and its tensors are named there.
        order = self.targeted(name)
        tensors = {}
        for depth, parameter in enumerate(reversed(order)):
            delta = self.deltas[name][parameter]
            prefix = path + ".base_layer" * depth
            for key, value in delta.file_state().items():
                tensors[f"{prefix}.{delta.peft_key(key)}"] = value
        return tensors

    # ---- merging ----
    @torch.no_grad()
    def merge(self, names: Iterable[str], keep_sparsity: bool = True) -> float:
        names = tuple(names)
        for name in names:
            if name in self.merged:
                raise ValueError(f"adapter {name!r} is already merged into {self.describe()}")
        for name in names:
            for parameter, delta in self.deltas[name].items():
                delta.merge_into(self._parameters[parameter], None, None)
            self.merged += (name,)
        self._refresh()
        return 0.0  # a bare parameter carries no pruning mask: nothing is dropped

    @torch.no_grad()
    def unmerge(self, names: Iterable[str] | None = None) -> None:
        names = tuple(reversed(self.merged)) if names is None else tuple(names)
        for name in names:
            if name not in self.merged:
                raise ValueError(f"adapter {name!r} is not merged into {self.describe()}")
            for parameter, delta in self.deltas[name].items():
                delta.unmerge_from(self._parameters[parameter], None, None)
            self.merged = tuple(n for n in self.merged if n != name)
        self._refresh()

    def restore_base(self) -> nn.Module:
        """Hand the parameters and buffers back to the module and return it (deltas are dropped)."""
        base = self.base_module
        base._parameters.update(self._parameters)
        base._buffers.update(self._buffers)
        return base

    def describe(self) -> str:
        return f"{type(self.base_module).__name__} {self.module_name or '(unnamed)'}"

    def extra_repr(self) -> str:
        parts = [f"base={self.describe()}", f"active={list(self.active)}"]
        return ", ".join(parts + ([f"merged={list(self.merged)}"] if self.merged else []))


@contextlib.contextmanager
def _lent(module: nn.Module, parameters: dict, buffers: dict, children: dict):
    """The module holds ``parameters`` and ``buffers`` for the block (plain tensors allowed: the dicts are
    filled directly, as a parametrisation would read them), and holds none again after, even on error;
    ``children`` replace its submodules of those names (they are shared, so they may stay)."""
    module._parameters.update(parameters)
    module._buffers.update(buffers)
    module._modules.update(children)
    try:
        yield
    finally:
        module._parameters.clear()
        module._buffers.clear()


def wrap_parameters(model: nn.Module, name: str) -> ParameterHost:
    """The ParameterHost at ``name``, putting one in place of the module there first if needed."""
    module = model.get_submodule(name)
    if isinstance(module, ParameterHost):
        return module
    host = ParameterHost(module).train(module.training)
    host.module_name = name
    replace_module(model, name, host)
    return host
