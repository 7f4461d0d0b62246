"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020): small down-up MLPs after a layer."""

from ...core.method import WeightDeltaMethod, register
from .delta import BottleneckConfig, BottleneckDelta, make_bottleneck


@register
class Bottleneck(WeightDeltaMethod):
    name = "bottleneck"
    config = BottleneckConfig

    def make_delta(self, layer, config: BottleneckConfig) -> BottleneckDelta:
        return make_bottleneck(layer, config)


__all__ = ["BottleneckConfig", "BottleneckDelta"]
