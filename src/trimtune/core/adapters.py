"""Adding, switching, disabling and deleting adapters: the model-level bookkeeping every method shares.

``apply(model, config, name)`` changes the model in place (torchao's ``quantize_`` shape): it looks
the config's method up in the registry and runs the method's ``apply`` (``core/method.py``); a
weight-delta method's wraps its target layers once in a ``TunedLayer`` and adds its delta under
``name`` (``apply_weight_method``, here); a method that changes the model another way (prompt tuning)
does its own. Per-model bookkeeping lives in ``state_of(model)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from torch import nn

from .config import ConfigError
from .modules_to_save import ModuleCopies
from .parameter_host import ParameterHost, wrap_parameters
from .parameter_targets import select_parameters
from .registry import method_for_config
from .state import hosts, layers, replace_module, state_of, wrap
from .targets import has_default_targets, select
from .tuned_layer import TunedLayer


def copies_at(model: nn.Module, name: str) -> ModuleCopies:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if module is None:
        matches = [n for n, _ in model.named_modules() if n == name or n.endswith("." + name)]
        if len(matches) != 1:
            raise ValueError(f"modules_to_save entry {name!r} matches {len(matches)} modules ({matches[:5]}); name one module")
        name, module = matches[0], model.get_submodule(matches[0])
    if not isinstance(module, ModuleCopies):
        module = ModuleCopies(module).train(module.training)
        replace_module(model, name, module)
    return module


def apply(model: nn.Module, config, name: str = "default", activate: bool = True) -> nn.Module:
    """Add adapter ``name`` of the method ``config`` describes; it becomes the active one."""
    state = state_of(model)
    if name in state.adapters:
        raise ValueError(f"the model already has an adapter named {name!r}; use another name or delete_adapter first")
    method = method_for_config(config)
    merged = sorted({n for _, host in hosts(model) for n in host.merged})
    if merged and (activate or not state.active):  # activating the new one would deactivate merged ones
        raise ValueError(f"adapters {merged} are merged into the weights; unmerge(model) before adding adapter {name!r} "
                         "(or add it with activate=False)")
    method.apply(model, config, name)
    state.adapters[name] = config
    try:
        if activate or not state.active:
            set_adapter(model, name)
    except Exception:
        delete_adapter(model, name)
        raise
    return model


def apply_weight_method(model, config, name, make_delta, make_parameter_delta=None) -> None:
    """Wrap the layers ``config.targets`` selects and add ``make_delta(layer, config)`` to each; and
    for ``config.target_parameters`` (bare parameters, e.g. MoE experts), one ``make_parameter_delta(
    parameter, full name, owner, config)`` per parameter on a ``ParameterHost``. Everything is
    selected and checked before the model changes."""
    entries = getattr(config, "target_parameters", None)
    owners = select_parameters(model, entries) if entries else {}
    targets = _module_targets(model, config, parameters_too=bool(owners))
    clash = sorted(set(owners) & set(targets))
    if clash:
        raise ConfigError(f"target_parameters selects parameters of {clash[0]}, which targets selects as a layer too; "
                          "adapt it one way (targets=[] adapts the parameters alone)")
    if owners and make_parameter_delta is None:
        raise ConfigError(f"target_parameters={entries!r}: this method adapts layers only (LoRA adapts bare parameters)")
    with all_or_nothing(model, name):
        for target in targets:
            layer = wrap(model, target)
            layer.add_delta(name, make_delta(layer, config))
        for owner, parameters in owners.items():
            host = wrap_parameters(model, owner)
            host.add_deltas(name, {p: make_parameter_delta(getattr(host, p), f"{owner}.{p}", host, config) for p in parameters})
        add_head_copies(model, name, getattr(config, "modules_to_save", ()))


def _module_targets(model, config, parameters_too: bool) -> list[str]:
    """The layers ``config.targets`` selects. Beside target_parameters, as in peft, ``[]`` selects none,
    and None the architecture's default where the table has one, else none."""
    table = getattr(config, "default_targets", None)  # a method with other defaults than LoRA's (IA3) names them
    if parameters_too and (_is_empty_list(config.targets) or (config.targets is None and not has_default_targets(model, table))):
        return []
    return select(model, config.targets, table)


def _is_empty_list(spec) -> bool:
    return isinstance(spec, (list, tuple)) and not spec


@contextlib.contextmanager
def all_or_nothing(model: nn.Module, name: str):
    """Adding adapter ``name`` inside the block: if it fails, every host drops what it got, and the
    hosts the block created (wrappers, head copies, a prompt host) are taken out again."""
    before = {host_name for host_name, _ in hosts(model)}
    try:
        yield
    except Exception:
        for _, host in hosts(model):
            if name in host.adapter_names():
                host.delete_adapter(name)
        take_out_new_hosts(model, before)
        raise


def take_out_new_hosts(model: nn.Module, before: set[str]) -> None:
    for host_name, host in list(hosts(model)):
        if host_name not in before and not host.adapter_names():
            _take_out(model, host_name, host)


def _take_out(model: nn.Module, name: str, host) -> None:
    """Put back what stood at ``name`` before an empty host was created there."""
    if isinstance(host, TunedLayer):
        if host.weight_mask is None:
            replace_module(model, name, host.restore_base())
    elif isinstance(host, ParameterHost):
        replace_module(model, name, host.restore_base())
    elif isinstance(host, ModuleCopies):
        replace_module(model, name, host.original)
    else:  # a host the model gained as a new attribute (the prompt host, VeRA's shared matrices)
        host.detach()
        parent_name, _, child = name.rpartition(".")
        delattr(model.get_submodule(parent_name) if parent_name else model, child)


def add_head_copies(model: nn.Module, name: str, modules_to_save) -> None:
    for module_name in modules_to_save:
        copies_at(model, module_name).add_copy(name)


@contextlib.contextmanager
def applied(model: nn.Module, config, name: str = "default", activate: bool = True):
    """Apply ``config`` as adapter ``name`` for the block to fill (from a file, say). If the block
    fails, the adapter is removed, hosts it created are taken out and the previously active adapters
    come back: nothing half-loaded."""
    previous = active_adapters(model)
    before = {host_name for host_name, _ in hosts(model)}
    apply(model, config, name, activate=activate)
    try:
        yield
    except BaseException:
        delete_adapter(model, name)
        take_out_new_hosts(model, before)
        if previous:
            set_adapter(model, previous)
        raise


def set_adapter(model: nn.Module, names: str | Iterable[str]) -> None:
    """Make ``names`` the active adapters (several deltas on one layer add up); only they train."""
    names = [names] if isinstance(names, str) else list(names)
    state = state_of(model)
    missing = [n for n in names if n not in state.adapters]
    if missing:
        raise KeyError(f"no adapter named {missing[0]!r}; the model has {list(state.adapters)}")
    for _, host in hosts(model):
        host.set_active(names)
    state.active = names
    _update_trainable(model, names)


def _update_trainable(model: nn.Module, names: list[str]) -> None:
    """Freeze everything, then unfreeze the active adapters' own parameters (and biases if asked)."""
    for param in model.parameters():
        param.requires_grad_(False)
    state = state_of(model)
    for _, host in hosts(model):
        for name in names:
            if name in host.adapter_names():
                for param in host.trainable_parameters(name):
                    param.requires_grad_(True)
    for name in names:
        bias_mode = getattr(state.adapters[name], "bias", "none")
        if bias_mode == "all":
            for param_name, param in model.named_parameters():
                if param_name.endswith("bias") and ".deltas." not in param_name:
                    param.requires_grad_(True)
        elif bias_mode == "lora_only":
            for _, layer in layers(model):
                if name in layer.deltas and layer.bias is not None:
                    layer.bias.requires_grad_(True)


def active_adapters(model: nn.Module) -> list[str]:
    return list(state_of(model).active)


def adapter_config(model: nn.Module, name: str = "default"):
    adapters = state_of(model).adapters
    if name not in adapters:
        raise KeyError(f"no adapter named {name!r}; the model has {list(adapters)}")
    return adapters[name]


def adapter_configs(model: nn.Module) -> dict:
    """{name: config} of every adapter on the model, in the order they were added (a copy)."""
    return dict(state_of(model).adapters)


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Run the base model: every adapter off inside the block, restored after."""
    merged = [n for _, host in hosts(model) for n in host.merged]
    if merged:
        raise ValueError(f"adapters {sorted(set(merged))} are merged into the weights; unmerge before disabling")
    saved = {host: host.active for _, host in hosts(model)}
    try:
        for host in saved:
            host.set_active(())
        yield model
    finally:
        for host, active in saved.items():
            host.set_active(active)


def delete_adapter(model: nn.Module, name: str) -> None:
    state = state_of(model)
    if name not in state.adapters:
        raise KeyError(f"no adapter named {name!r}; the model has {list(state.adapters)}")
    for _, host in hosts(model):
        if name in host.adapter_names():
            host.delete_adapter(name)
    del state.adapters[name]
    state.callbacks.pop(name, None)
    state.active = [n for n in state.active if n != name]
