"""Nested python state (optimizer / scheduler / scaler state dicts, RNG states) as JSON + tensors.

State dicts mix tensors with ints, floats, strings, lists, tuples and dicts keyed by ints (the
optimizer's per-parameter state). Tensors go to a safetensors file under a path-like key; the rest
becomes JSON with each tensor replaced by ``{"__tensor__": key}``. Nothing is ever unpickled.
"""

from __future__ import annotations

import torch

TENSOR, ITEMS, TUPLE = "__tensor__", "__items__", "__tuple__"


def encode(obj, tensors: dict[str, torch.Tensor], key: str):
    """A JSON-able copy of ``obj``; its tensors are added to ``tensors`` under keys starting with ``key``."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj
        return {TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: encode(v, tensors, f"{key}/{k}") for k, v in obj.items()}
        # int keys (optimizer state by parameter index) would turn into strings in JSON
        return {ITEMS: [[k, encode(v, tensors, f"{key}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {TUPLE: [encode(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {key} of type {type(obj).__name__} in a checkpoint: only tensors, numbers, strings, lists, tuples and dicts")


def decode(obj, tensors: dict[str, torch.Tensor]):
    """The inverse of ``encode``."""
    if isinstance(obj, dict):
        if TENSOR in obj:
            return tensors[obj[TENSOR]]
        if ITEMS in obj:
            return {k: decode(v, tensors) for k, v in obj[ITEMS]}
        if TUPLE in obj:
            return tuple(decode(v, tensors) for v in obj[TUPLE])
        return {k: decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    return obj
