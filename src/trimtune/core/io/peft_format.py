"""The PEFT adapter format: trimtune configs <-> ``adapter_config.json``, tensors <-> peft's keys.

The convention a method follows to get PEFT-compatible files (nothing here names a method):

- its config class has ``peft_type`` (peft's name, e.g. ``"LORA"``), ``to_peft_dict(layers)``
  (peft's config fields; ``layers`` maps module name -> the TunedLayer carrying the adapter) and
  a classmethod ``from_peft_dict(d)`` that refuses fields it cannot honour (``check_fields``);
  registering the method (``core.registry.register``) with that ``peft_type`` is enough for the
  loader to find it;
- each adapter host gives its live tensors under peft's keys (``AdapterHost.peft_tensors``);
  a Delta only says how peft names its entries relative to the layer (``Delta.peft_key``).

Biases trained with ``bias="lora_only"/"all"`` and the model-level fields (``task_type``,
``base_model_name_or_path``) are handled here for every method. A family whose files do not fit
this tensor mapping (prompts store an encoder's *output*) registers its own directory writer and
reader as its method's ``save``/``load``; ``save_adapter``/``load_adapter`` then hand over to them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from ..adapter_host import AdapterHost
from ..config import ConfigError
from ..registry import method_for_peft, peft_types
from ..tuned_layer import TunedLayer
from .gather import model_class

PREFIX = "base_model.model."  # where peft's PeftModel keeps the wrapped model
# Bookkeeping fields of every peft config: they do not change what the adapter computes.
BOOKKEEPING = {"peft_type", "task_type", "peft_version", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping"}
_TASK_TYPES = (  # transformers class-name suffix -> peft task_type (peft picks its model class by it)
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
)
_SEQ_CLS_HEADS = ("classifier", "score")  # peft's SEQ_CLS model always trains these (name suffix)


class FormatError(ValueError):
    """An adapter directory is missing, unreadable, or does not describe an adapter trimtune can load."""


class PeftTargets:
    """peft's target selection, reproduced: ``target_modules`` (a string is ``re.fullmatch`` on the
    whole module name, a list a dotted-suffix match), ``exclude_modules`` (same two forms) and, for a
    list, ``layers_to_transform`` with ``layers_pattern`` (the layer index in the name). Kept as an
    object so saving the config again writes the same ``target_modules``."""

    def __init__(self, target_modules, exclude_modules=None, layers_to_transform=None, layers_pattern=None):
        if isinstance(target_modules, str) and (layers_to_transform not in (None, []) or layers_pattern not in (None, [], "")):
            # peft refuses this too: a regex picks the modules itself, layer indices apply to lists only
            raise ConfigError(f"adapter_config.json sets target_modules to the regex {target_modules!r} together with "
                              "layers_to_transform/layers_pattern, which apply only to a list of module names (peft refuses "
                              "this as well); list the module names, or put the layer numbers into the regex")
        self.target_modules = target_modules if isinstance(target_modules, str) else list(target_modules)
        self.exclude_modules = exclude_modules
        self.layers_to_transform = layers_to_transform
        self.layers_pattern = [layers_pattern] if isinstance(layers_pattern, str) else (layers_pattern or [])

    @property
    def plain(self) -> bool:
        """True when target_modules alone decides (it can then be written back as it was)."""
        return not self.exclude_modules and self.layers_to_transform in (None, [])

    def __call__(self, name: str, module: nn.Module) -> bool:
        if self.exclude_modules and _peft_match(self.exclude_modules, name):
            return False
        if not _peft_match(self.target_modules, name):
            return False
        if isinstance(self.target_modules, str) or self.layers_to_transform in (None, []):
            return True  # peft applies layer indices to list targets only
        index = self._layer_index(name)
        wanted = self.layers_to_transform
        return index is not None and (index == wanted if isinstance(wanted, int) else index in wanted)

    def _layer_index(self, name: str) -> int | None:
        # peft takes the FIRST number after the layers' container (not an expert index further in).
        patterns = [rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\." for p in self.layers_pattern] or [r".*?\.[^.]*\.(?P<idx>\d+)\."]
        match = next((m for m in (re.match(p, name) for p in patterns) if m), None)
        return int(match.group("idx")) if match else None

    def __repr__(self) -> str:
        extras = {k: v for k, v in vars(self).items() if k != "target_modules" and v}
        return f"PeftTargets({self.target_modules!r}{''.join(f', {k}={v!r}' for k, v in extras.items())})"

    def __eq__(self, other) -> bool:
        return isinstance(other, PeftTargets) and vars(other) == vars(self)


def _peft_match(spec, name: str) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == key or name.endswith("." + key) for key in spec)


def peft_target_modules(spec, names: Sequence[str]) -> str | list[str]:
    """peft's ``target_modules`` for a trimtune targets spec; ``names`` are the layers it selected.

    A regex keeps its meaning (trimtune matches it on a dotted-name suffix, peft with fullmatch on
    the whole name); a list of names means the same in both; anything else (None, "all-linear",
    a type, a predicate) is written as the exact list of selected layers.
    """
    if isinstance(spec, PeftTargets):
        return spec.target_modules if spec.plain else sorted(names)
    if isinstance(spec, str) and spec != "all-linear":
        return rf"(?:.*\.)?(?:{spec})"
    if isinstance(spec, Sequence) and not isinstance(spec, str) and all(isinstance(n, str) for n in spec):
        return list(spec)
    return sorted(names)


def targets_from_peft(value, exclude_modules=None, layers_to_transform=None, layers_pattern=None):
    """A trimtune targets spec meaning what peft's fields mean (``value``: peft's target_modules)."""
    if value is None:
        return None  # peft's default per architecture; trimtune's defaults are the same choices
    targets = PeftTargets(value, exclude_modules, layers_to_transform, layers_pattern)
    return list(value) if targets.plain and not isinstance(value, str) else targets


def check_fields(d: dict, handled: set[str], peft_type: str) -> None:
    """Refuse a peft config that sets a field (to anything but its off value) we do not implement."""
    for key, value in d.items():
        if key in handled or key in BOOKKEEPING or value in (None, False, [], {}, ""):
            continue
        raise ConfigError(
            f"adapter_config.json sets {key}={value!r}, which trimtune's {peft_type} does not support; "
            f"supported fields: {', '.join(sorted(handled))}"
        )


def task_type_of(model: nn.Module, adapter: str) -> str | None:
    class_name = model_class(model).__name__
    task = next((task for suffix, task in _TASK_TYPES if class_name.endswith(suffix)), None)
    if task == "SEQ_CLS":
        heads = [m for n, m in model.named_modules() if n.endswith(_SEQ_CLS_HEADS)]
        if not all(isinstance(m, AdapterHost) and adapter in m.adapter_names() for m in heads):
            return None  # peft's SEQ_CLS model would demand head tensors for a head this adapter did not train
    return task


def to_peft_config(model: nn.Module, config, name: str, layers: dict[str, nn.Module]) -> dict:
    """peft's adapter_config.json for adapter ``name``; a method's ``to_peft_dict`` may override any field."""
    if not hasattr(config, "to_peft_dict") or not getattr(config, "peft_type", None):
        raise FormatError(f"{type(config).__name__} has no PEFT file format (no peft_type / to_peft_dict)")
    return {
        "peft_type": config.peft_type,
        "task_type": task_type_of(model, name),
        "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        "inference_mode": True,
        **config.to_peft_dict(layers),
    }


def method_of(d: dict):
    """The registered method that reads an ``adapter_config.json`` holding ``d``."""
    if not isinstance(d, dict):
        raise FormatError(f"adapter_config.json must hold a JSON object, got {type(d).__name__}")
    if "peft_type" not in d:
        raise FormatError("adapter_config.json has no peft_type field")
    method = method_for_peft(d)
    if method is None:
        raise FormatError(f"adapter_config.json has peft_type {d['peft_type']!r}; trimtune can load: {', '.join(peft_types())}")
    return method


def bias_tensors(model: nn.Module, config, name: str, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Base biases trained with the adapter, under peft's keys (a wrapped layer's bias sits under
    peft's ``base_layer``): those of the adapter's layers (``lora_only``) or every bias (``all``)."""
    mode = getattr(config, "bias", "none")
    if mode == "lora_only":
        return {f"{PREFIX}{n}.base_layer.bias": layer.bias for n, layer in layers.items() if layer.bias is not None}
    if mode != "all":
        return {}
    wrapped = {n for n, m in model.named_modules() if isinstance(m, TunedLayer)}
    found = {}
    for key, param in model.named_parameters():
        if not key.endswith("bias") or ".deltas." in key or ".copies." in key:
            continue
        owner = key.rpartition(".")[0]
        found[f"{PREFIX}{owner}.base_layer.bias" if owner in wrapped else PREFIX + key] = param
    return found
