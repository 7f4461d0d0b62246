"""Methods register themselves here: a config type maps to the function that applies it.

Adding a method is adding a file: a weight-delta method registers a ``make_delta(layer, config)``
factory and gets target selection, wrapping, freezing and adapter bookkeeping from ``api.apply``;
a method that changes the model in another way (prompt tuning) registers a whole
``apply(model, config, name)`` function.
"""

from __future__ import annotations

from collections.abc import Callable

WEIGHT_METHODS: dict[type, Callable] = {}
MODEL_METHODS: dict[type, Callable] = {}


def register_weight_method(config_type: type):
    def decorate(make_delta):
        WEIGHT_METHODS[config_type] = make_delta
        return make_delta

    return decorate


def register_model_method(config_type: type):
    def decorate(apply_fn):
        MODEL_METHODS[config_type] = apply_fn
        return apply_fn

    return decorate


def known_configs() -> list[str]:
    return sorted(t.__name__ for t in (*WEIGHT_METHODS, *MODEL_METHODS))
