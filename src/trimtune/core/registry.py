"""The one table of methods: everything the layers above need to know about a method, by name.

A method package registers a ``Method`` when it is imported (``trimtune.methods`` imports them all).
The verbs, the training loop, the recipe schema, the CLI and the file readers look a method up here
(by its recipe name, its config class, or the ``peft_type`` of a file) and call its hooks; nothing
above ``methods/`` branches on a method's config type. Adding a method is adding one package that
calls ``register``.

What a method gives (every hook is optional; the default is what a plain weight delta such as LoRA needs):

- ``make_delta(layer, config) -> Delta``: a weight-delta method; ``apply`` wraps the targets and adds it.
- ``apply(model, config, name)``: a method that changes the model another way (prompts, AdaLoRA's
  budget, QLoRA's 4-bit base) does the whole apply itself.
- ``save(model, path, name)`` / ``load(model, path, name, check_base=, activate=) -> config``: a
  method whose files are not PEFT tensor files per layer (prompts, the sparse diff).
- ``peft_type`` and ``claims_peft(peft_config_dict) -> bool``: which ``adapter_config.json`` files it
  reads (DoRA and LoRA share peft's "LORA" type; ``use_dora`` tells them apart).
- ``artifact``: the run directory's sub-folder for its file (``adapter``, or ``diff``).
- ``prepare_base(model, config)``: what the base needs before the adapter's file can load onto it
  (QLoRA quantises it to 4 bits: the adapter was trained and fingerprinted on that base).
- ``callbacks(model, name, config, train_options) -> list``: extra training callbacks, e.g. diff's
  L0 penalty (``train_options``: the recipe's train section, or None).
- ``finish(model, name, config) -> (dict, str)``: after training, before saving (diff projects to its
  exact density); the dict goes into the run's summary, the line into its log.
- ``run_files(model, name, config) -> {file name: JSON-able}``: extra records in a run directory
  (AdaLoRA's final ranks).
- ``mergeable``: False for methods whose change is not a weight (prompts): merge/export refuse them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    config: type
    make_delta: Callable | None = None
    apply: Callable | None = None
    save: Callable | None = None
    load: Callable | None = None
    peft_type: str | None = None
    claims_peft: Callable[[dict], bool] | None = None
    artifact: str = "adapter"
    prepare_base: Callable | None = None
    callbacks: Callable | None = None
    finish: Callable | None = None
    run_files: Callable | None = None
    mergeable: bool = True
    in_recipes: bool = True  # False: an API-only method (e.g. learned L0 gates), not a recipe's method.type


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if (method.make_delta is None) == (method.apply is None):
        raise TypeError(f"method {method.name!r} must give exactly one of make_delta and apply")
    known = METHODS.get(method.name)
    if known is not None and known.config is not method.config:
        raise ValueError(f"a method named {method.name!r} is already registered ({known.config.__name__})")
    METHODS[method.name] = method
    return method


def known_methods() -> list[str]:
    return sorted(METHODS)


def method_for_config(config) -> Method:
    for method in METHODS.values():
        if type(config) is method.config:
            return method
    known = ", ".join(sorted(m.config.__name__ for m in METHODS.values()))
    raise TypeError(f"{type(config).__name__} is not a trimtune method config; known: {known}")


def method_named(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"no method named {name!r}; known: {', '.join(known_methods())}")
    return METHODS[name]


def recipe_methods() -> dict[str, type]:
    """{recipe method.type: config class} for every method a recipe can name."""
    return {m.name: m.config for m in METHODS.values() if m.in_recipes}


def method_for_peft(peft_config: dict) -> Method | None:
    """The method that reads an ``adapter_config.json`` with this content (None: no method does)."""
    peft_type = peft_config.get("peft_type")
    candidates = [m for m in METHODS.values() if m.peft_type == peft_type]
    claimed = [m for m in candidates if m.claims_peft is None or m.claims_peft(peft_config)]
    # None claims it (e.g. a field no variant implements): the plain method reads it and names the field it refuses.
    return (claimed or candidates or [None])[0]


def peft_types() -> list[str]:
    return sorted({m.peft_type for m in METHODS.values() if m.peft_type})
