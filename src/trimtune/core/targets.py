"""Choosing which modules a method touches.

Everything reduces to a predicate ``(name, module) -> bool``. A spec may be:

- a string: a regular expression matched against the end of the dotted module name, on a
  component boundary (``"query|value"`` matches ``bert.encoder.layer.0.attention.self.query``;
  ``r"layer\\.[0-2]\\..*query"`` the first three layers' queries); ``"all-linear"`` is every
  linear layer but the output head;
- a list of names: each matches the module name or its dotted suffix (peft's list semantics);
- a module type or tuple of types;
- a callable predicate;
- None: the architecture's default (BERT query/value, Llama q_proj/v_proj, GPT-2 c_attn).

Helpers ``by_regex``, ``by_glob``, ``by_names`` and ``by_type`` build predicates explicitly.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence

from torch import nn

from .architectures import defaults
from .layer_kinds import kind_class_for, supported_types
from .modules_to_save import ModuleCopies
from .tuned_layer import TunedLayer

Predicate = Callable[[str, nn.Module], bool]
TargetSpec = str | Sequence[str] | type | tuple | Predicate | None

# Per-architecture defaults, keyed by ``config.model_type`` (the same choices peft makes).
DEFAULT_TARGETS: dict[str, list[str]] = defaults("lora")

_HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs")


class TargetError(ValueError):
    """A target spec matched nothing, or matched a module that cannot be wrapped."""

def by_regex(pattern: str) -> Predicate:
    compiled = re.compile(rf"(?:^|\.)(?:{pattern})$")
    return lambda name, module: compiled.search(name) is not None


def by_glob(pattern: str) -> Predicate:
    """Shell-style match on the full dotted name (``*.attention.self.q*``)."""
    return lambda name, module: fnmatch.fnmatchcase(name, pattern)


def by_names(names: Sequence[str]) -> Predicate:
    wanted = tuple(names)
    return lambda name, module: any(name == n or name.endswith("." + n) for n in wanted)


def by_type(*types: type) -> Predicate:
    return lambda name, module: isinstance(module, types)


def all_linear(model: nn.Module) -> Predicate:
    """Every linear layer (nn.Linear, GPT-2 Conv1D) except the model's output head."""
    output_layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def predicate(name, module):
        if module is output_layer or name.split(".")[-1] in _HEAD_NAMES:
            return False
        return kind_class_for(module) is not None and not isinstance(module, (nn.Embedding, nn.modules.conv._ConvNd))

    return predicate


def default_targets(model: nn.Module, table: dict[str, TargetSpec] | None = None) -> TargetSpec:
    """The architecture's default targets from ``table`` (a method's own table, else LoRA's)."""
    table = DEFAULT_TARGETS if table is None else table
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in table:
        known = ", ".join(sorted(table))
        raise TargetError(
            f"no default targets for model type {model_type!r} ({type(model).__name__}); pass targets= "
            f"(a regex, list of names, type or predicate). Defaults exist for: {known}"
        )
    return table[model_type]


def has_default_targets(model: nn.Module, table: dict[str, TargetSpec] | None = None) -> bool:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return model_type in (DEFAULT_TARGETS if table is None else table)


def to_predicate(spec: TargetSpec, model: nn.Module, defaults: dict[str, TargetSpec] | None = None) -> Predicate:
    if spec is None:  # a table entry is itself a spec (a list of names, or a regex where names are ambiguous)
        return to_predicate(default_targets(model, defaults), model)
    if isinstance(spec, str):
        return all_linear(model) if spec == "all-linear" else by_regex(spec)
    if isinstance(spec, type) or (isinstance(spec, tuple) and all(isinstance(t, type) for t in spec)):
        return by_type(*(spec if isinstance(spec, tuple) else (spec,)))
    if callable(spec):
        return spec
    if isinstance(spec, Sequence) and all(isinstance(n, str) for n in spec):
        return by_names(spec)
    raise TargetError(f"targets must be a regex string, a list of names, a type or a predicate, got {spec!r}")


def _owned_prefixes(model: nn.Module) -> list[str]:
    """Names of trimtune's own containers (deltas, per-adapter copies): never targets themselves."""
    prefixes = []
    for name, module in model.named_modules():
        if isinstance(module, TunedLayer):
            prefixes.append(f"{name}.deltas.")
        elif isinstance(module, ModuleCopies):
            prefixes.append(f"{name}.copies.")
    return prefixes


def candidate_modules(model: nn.Module):
    """(name, base module) for every module trimtune could wrap, wrappers seen through."""
    owned = _owned_prefixes(model)
    for name, module in model.named_modules():
        if not name or any(f"{name}.".startswith(p) for p in owned):
            continue
        yield name, (module.base_layer if isinstance(module, TunedLayer) else module)


def select(model: nn.Module, spec: TargetSpec, defaults: dict[str, TargetSpec] | None = None) -> list[str]:
    """Names of the modules that ``spec`` selects; each must be a wrappable layer type.
    ``defaults``: per-architecture specs used when ``spec`` is None (LoRA's table if not given)."""
    predicate = to_predicate(spec, model, defaults)
    chosen, unsupported = [], []
    for name, module in candidate_modules(model):
        if predicate(name, module):
            (chosen if kind_class_for(module) is not None else unsupported).append((name, module))
    if unsupported:
        shown = ", ".join(f"{n} ({type(m).__name__})" for n, m in unsupported[:5])
        raise TargetError(
            f"targets {_describe(spec)} matched modules that cannot be wrapped: {shown}. "
            f"Supported layer types: {', '.join(supported_types())}. Narrow the pattern to the layers themselves."
        )
    if not chosen:
        raise TargetError(f"targets {_describe(spec)} matched no module. {_candidates_hint(model)}")
    return [name for name, _ in chosen]


def _describe(spec: TargetSpec) -> str:
    # a function by its name; a callable object (an adapter file's peft targets) by its repr, never "None"
    name = getattr(spec, "__name__", None) if callable(spec) and not isinstance(spec, type) else None
    return name or repr(spec)


def _candidates_hint(model: nn.Module, limit: int = 40) -> str:
    # One entry per layer *position* (block numbers folded to N), so intermediate.dense and output.dense
    # both appear, not one example per last name component.
    positions: dict[str, str] = {}
    for name, module in candidate_modules(model):
        if kind_class_for(module) is not None:
            positions.setdefault(re.sub(r"\.\d+(?=\.|$)", ".N", name), type(module).__name__)
    if not positions:
        return f"The model has no layer of a supported type ({', '.join(supported_types())})."
    listed = "; ".join(f"{name} ({kind})" for name, kind in list(positions.items())[:limit])
    more = f" (and {len(positions) - limit} more)" if len(positions) > limit else ""
    return f"Wrappable layers (N: any block number): {listed}{more}"
