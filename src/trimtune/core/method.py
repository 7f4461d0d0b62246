"""What a tuning method is: a small typed class, registered by name with ``@register``.

A method package subclasses ``WeightDeltaMethod`` (a ``Delta`` on each targeted layer: LoRA, IA3,
diff) or ``Method`` (a method that changes the model another way: prompts, VeRA's shared matrices,
QLoRA's 4-bit base). What every method must answer is abstract; what it may change has a default
that suits a plain weight delta::

    @register
    class Dora(WeightDeltaMethod):
        name = "dora"                      # required: a recipe's method.type, the name in files
        config = DoraConfig                # required: its config dataclass (tt.DoraConfig)
        peft_type = "LORA"                 # optional: which adapter_config.json files it reads

        def make_delta(self, layer, config):   # required (abstract)
            return make_dora(layer, config)

        def claims_peft(self, peft_config):    # optional
            return peft_config.get("use_dora", False) is True

``register`` checks the class when the package is imported, so a method missing a part fails at
once, naming the part. A method's training behaviour rides on the model: ``apply`` may put a
training callback into ``state_of(model).callbacks[name]`` (AdaLoRA's rank budget, diff's sparsity
penalty), which ``trimtune.train`` runs, so the library and the CLI train alike. What only recipe
runs need (run artifacts, extra run files) lives in ``recipes/method_runs.py``, not here.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from torch import nn

from .adapters import apply_weight_method
from .io.peft_format import method_of
from .io.peft_files import load_weight_adapter, read_config, save_weight_adapter
from .registry import METHODS


class Method(ABC):
    """A tuning method: its name, its config class and how it adds an adapter to a model."""

    name: ClassVar[str]  # required: the recipe's method.type and the name files record
    config: ClassVar[type]  # required: the config dataclass whose instances select this method
    peft_type: ClassVar[str | None] = None  # the adapter_config.json peft_type it reads (None: no peft files)
    mergeable: ClassVar[bool] = True  # False when its change is not a weight (prompts): merge/export refuse it

    @abstractmethod
    def apply(self, model: nn.Module, config, name: str) -> None:
        """Add adapter ``name`` described by ``config`` to ``model`` (in place, all or nothing)."""

    def claims_peft(self, peft_config: dict) -> bool:
        """Whether it reads this ``adapter_config.json`` among the methods sharing its ``peft_type``."""
        return True

    def save(self, model: nn.Module, path: str | os.PathLike, name: str) -> Path:
        """Write adapter ``name``; by default peft's ``adapter_config.json`` + ``adapter_model.safetensors``."""
        return save_weight_adapter(model, path, name)

    def load(self, model: nn.Module, path: Path, name: str, check_base: bool = True, activate: bool = True):
        """Add adapter ``name`` from what ``save`` wrote at ``path``; returns its config. By default the
        peft files are read as their ``peft_type`` says (a QLoRA adapter is a plain LoRA file)."""
        peft_config = read_config(path)
        config = method_of(peft_config).config.from_peft_dict(peft_config)
        return load_weight_adapter(model, path, name, config, check_base=check_base, activate=activate)


class WeightDeltaMethod(Method):
    """A method that puts one ``Delta`` on each targeted layer: ``apply`` wraps the targets, adds the
    delta under the adapter's name, copies ``modules_to_save`` and rolls back on failure."""

    # Optional: ``make_parameter_delta(parameter, full_name, host, config)``, the delta for one bare parameter a
    # config's ``target_parameters`` selects (LoRA's MoE experts); None: the method adapts layers only.
    make_parameter_delta = None

    @abstractmethod
    def make_delta(self, layer, config):
        """The delta for one wrapped layer (a ``TunedLayer``); refuse a layer it cannot serve, naming it."""

    def apply(self, model: nn.Module, config, name: str) -> None:
        apply_weight_method(model, config, name, self.make_delta, self.make_parameter_delta)


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: check ``cls`` is a complete method and enter it in the registry by name."""
    where = f"method class {cls.__name__} ({cls.__module__})"
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{where} must subclass trimtune.core.method.Method (or WeightDeltaMethod)")
    name = cls.__dict__.get("name", getattr(cls, "name", None))
    if not isinstance(name, str) or not name:
        raise TypeError(f"{where} must set name = '...': the method's recipe name (method.type) and the name files record")
    config = getattr(cls, "config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise TypeError(f"{where} must set config to its config dataclass, got {config!r}")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"{where} does not implement {', '.join(missing)}, which a {_abstract_base(cls)} must give")
    files = cls.peft_type is not None and (cls.save is Method.save or cls.load is Method.load)
    if files and not all(hasattr(config, f) for f in ("to_peft_dict", "from_peft_dict")):
        raise TypeError(f"{where} reads peft files (peft_type={cls.peft_type!r}) with the default save/load, so "
                        f"{config.__name__} must give to_peft_dict and from_peft_dict (or override save and load)")
    known = METHODS.get(name)
    if known is not None and known.config is not config:
        raise ValueError(f"a method named {name!r} is already registered ({known.config.__name__})")
    METHODS[name] = cls()
    return cls


def _abstract_base(cls: type) -> str:
    """The nearest base class that declared the missing parts (Method or WeightDeltaMethod)."""
    return next(base.__name__ for base in inspect.getmro(cls)[1:] if getattr(base, "__abstractmethods__", None))
