"""The model-level verbs: apply a method, switch, disable, merge, unmerge, unload, count.

``apply(model, config, name)`` changes the model in place (torchao's ``quantize_`` shape): it
selects the target layers, wraps them once in a ``TunedLayer`` and adds the method's delta under
``name``. Per-model bookkeeping (which configs, which one is active) lives in ``model._trimtune``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from torch import nn

from .copies import ModuleCopies
from .layers import AdapterHost, TunedLayer
from .quant import logical_numel
from .registry import MODEL_METHODS, WEIGHT_METHODS, known_configs
from .targets import select

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


def hosts(model: nn.Module) -> Iterator[tuple[str, AdapterHost]]:
    for name, module in model.named_modules():
        if isinstance(module, AdapterHost):
            yield name, module


def layers(model: nn.Module) -> Iterator[tuple[str, TunedLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, TunedLayer):
            yield name, module


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def wrap(model: nn.Module, name: str) -> TunedLayer:
    """The TunedLayer at ``name``, wrapping the module there first if needed."""
    module = model.get_submodule(name)
    if isinstance(module, TunedLayer):
        return module
    layer = TunedLayer(module)
    layer.module_name = name  # for methods that treat layers differently by name (IA3's feed-forward set)
    _replace(model, name, layer)
    return layer


def _copies_at(model: nn.Module, name: str) -> ModuleCopies:
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
        module = ModuleCopies(module)
        _replace(model, name, module)
    return module


def apply(model: nn.Module, config, name: str = "default", activate: bool = True) -> nn.Module:
    """Add adapter ``name`` of the method ``config`` describes; it becomes the active one."""
    state = state_of(model)
    if name in state.adapters:
        raise ValueError(f"the model already has an adapter named {name!r}; use another name or delete_adapter first")
    if type(config) in MODEL_METHODS:
        MODEL_METHODS[type(config)](model, config, name)
    elif type(config) in WEIGHT_METHODS:
        _apply_weight_method(model, config, name, WEIGHT_METHODS[type(config)])
    else:
        raise TypeError(f"{type(config).__name__} is not a trimtune method config; known: {', '.join(known_configs())}")
    state.adapters[name] = config
    if activate or not state.active:
        set_adapter(model, name)
    return model


def _apply_weight_method(model, config, name, make_delta) -> None:
    # A method with other per-architecture defaults than LoRA's (IA3, adapters) names them on its config.
    targets = select(model, config.targets, getattr(config, "default_targets", None))
    with all_or_nothing(model, name):
        for target in targets:
            layer = wrap(model, target)
            layer.add_delta(name, make_delta(layer, config))
        add_head_copies(model, name, getattr(config, "modules_to_save", ()))


@contextlib.contextmanager
def all_or_nothing(model: nn.Module, name: str):
    """Adding adapter ``name`` inside the block: if it fails, every host drops what it got."""
    try:
        yield
    except Exception:
        for _, host in hosts(model):
            if name in host.adapter_names():
                host.delete_adapter(name)
        raise


def add_head_copies(model: nn.Module, name: str, modules_to_save) -> None:
    for module_name in modules_to_save:
        _copies_at(model, module_name).add_copy(name)


@contextlib.contextmanager
def applied(model: nn.Module, config, name: str = "default", activate: bool = True):
    """Apply ``config`` as adapter ``name`` for the block to fill (from a file, say). If the block
    fails, the adapter is removed and the previously active adapters come back: nothing half-loaded."""
    previous = active_adapters(model)
    apply(model, config, name, activate=activate)
    try:
        yield
    except BaseException:
        delete_adapter(model, name)
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


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Run the base model: every adapter off inside the block, restored after."""
    merged = [n for _, layer in layers(model) for n in layer.merged]
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


def merge(model: nn.Module, adapters: Iterable[str] | None = None, keep_sparsity: bool = True) -> nn.Module:
    """Fold the active (or named) adapters into the base weights. With a pruning mask on a layer,
    the merged change is masked too (``keep_sparsity``), so a pruned model stays sparse."""
    names = list(state_of(model).active if adapters is None else adapters)
    for layer_name, layer in layers(model):
        todo = [n for n in names if n in layer.deltas]
        already = [n for n in todo if n in layer.merged]
        if already:
            raise ValueError(f"adapter {already[0]!r} is already merged (at {layer_name}); unmerge first")
    dropped = 0.0
    for _, layer in layers(model):
        todo = [n for n in names if n in layer.deltas]
        if todo:
            dropped = max(dropped, layer.merge(todo, keep_sparsity=keep_sparsity))
    _warn_if_outputs_change(dropped)
    return model


def _warn_if_outputs_change(dropped: float) -> None:
    if dropped > 1e-6:
        warnings.warn(
            f"merging kept the pruned layers sparse, which drops the part of a low-rank adapter's change "
            f"on pruned entries (up to {dropped:.0%} of its norm in a layer): the adapter was trained "
            "unmasked, so the merged model's outputs differ from the trained model's. To keep the outputs "
            "(and make those layers dense), merge with keep_sparsity=False (CLI: merge/export --dense); to train "
            "LoRA masked so that the sparse merge is exact, use LoraConfig(follow_mask=True)",
            stacklevel=3,
        )


def unmerge(model: nn.Module) -> nn.Module:
    merged = [layer for _, layer in layers(model) if layer.merged]
    if not merged:
        raise ValueError("no adapter is merged into this model")
    for layer in merged:
        layer.unmerge()
    return model


def unload(model: nn.Module, merge_adapters: bool = False) -> nn.Module:
    """Return the plain model: original layer classes, trimtune removed. With ``merge_adapters``
    the active adapters are folded in first (and trained head copies kept); otherwise the base
    weights are restored exactly as they were. Input deltas (prompts, prefixes) are removed either way."""
    dropped = 0.0
    for name, layer in list(layers(model)):
        if merge_adapters:
            pending = [n for n in layer.active if n not in layer.merged]
            if pending:
                dropped = max(dropped, layer.merge(pending))
        elif layer.merged:
            layer.unmerge()
        if layer.weight_mask is not None:  # a plain layer has no mask: keep the pruning in its weight
            layer.weight.data.mul_(layer.weight_mask)
        _replace(model, name, layer.restore_base())
    for name, module in list(model.named_modules()):
        if isinstance(module, ModuleCopies):
            keep = module.copies[module.active[0]] if (merge_adapters and module.active) else module.original
            _replace(model, name, keep)
    for name, host in list(hosts(model)):  # the rest (input deltas) cannot fold into weights: removed
        host.detach()
        parent_name, _, child = name.rpartition(".")
        delattr(model.get_submodule(parent_name) if parent_name else model, child)
    if hasattr(model, STATE_ATTR):
        object.__delattr__(model, STATE_ATTR)
    _warn_if_outputs_change(dropped)
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for param in model.parameters():
        count = logical_numel(param)  # a 4-bit weight counts its parameters, not its bytes
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> None:
    trainable, total = trainable_parameters(model)
    print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / max(total, 1):.4f}")
