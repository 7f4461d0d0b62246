"""IA3 (Liu et al., 2022): learned vectors that rescale keys, values and feed-forward activations."""

from ...core.registry import Method, register
from .delta import IA3Config, IA3Delta, make_ia3

register(Method("ia3", IA3Config, make_delta=make_ia3, peft_type="IA3"))

__all__ = ["IA3Config", "IA3Delta"]
