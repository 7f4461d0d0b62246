"""IA3 (Liu et al., 2022): learned vectors that rescale keys, values and feed-forward activations."""

from ...core.method import WeightDeltaMethod, register
from .delta import IA3Config, IA3Delta, make_ia3


@register
class IA3(WeightDeltaMethod):
    name = "ia3"
    config = IA3Config
    peft_type = "IA3"

    def make_delta(self, layer, config: IA3Config) -> IA3Delta:
        return make_ia3(layer, config)


__all__ = ["IA3Config", "IA3Delta"]
