"""The one table of methods, by name: the verbs and file readers find a method here.

A method package defines a ``Method`` subclass (``core/method.py``) and decorates it with
``@register``, which enters one instance here when the package is imported (``trimtune.methods``
imports them all). The verbs and the file readers look a method up by its config, its name or the
``peft_type`` of a file and call its parts; nothing above ``methods/`` branches on a config's type.
"""

from __future__ import annotations

METHODS: dict[str, object] = {}  # name -> Method instance (core/method.py; not imported here: it imports the verbs)


def known_methods() -> list[str]:
    return sorted(METHODS)


def method_for_config(config):
    """The registered method whose config class ``config`` is an instance of (exactly, not a subclass:
    QLoraConfig is a LoraConfig, yet QLoRA is its own method)."""
    for method in METHODS.values():
        if type(config) is method.config:
            return method
    known = ", ".join(sorted(m.config.__name__ for m in METHODS.values()))
    raise TypeError(f"{type(config).__name__} is not a trimtune method config; known: {known}")


def method_named(name: str):
    if name not in METHODS:
        raise KeyError(f"no method named {name!r}; known: {', '.join(known_methods())}")
    return METHODS[name]


def method_for_peft(peft_config: dict):
    """The method that reads an ``adapter_config.json`` with this content (None: no method does)."""
    peft_type = peft_config.get("peft_type")
    candidates = [m for m in METHODS.values() if m.peft_type == peft_type]
    claimed = [m for m in candidates if m.claims_peft(peft_config)]
    # None claims it (e.g. a field no variant implements): the plain method reads it and names the field it refuses.
    return (claimed or candidates or [None])[0]


def peft_types() -> list[str]:
    return sorted({m.peft_type for m in METHODS.values() if m.peft_type})


def registered_methods() -> dict:
    """{name: method} of every registered method (a copy: registering goes through ``@register``)."""
    return dict(METHODS)
