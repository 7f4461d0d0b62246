"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020): small down-up MLPs after a layer."""

from ...core.registry import Method, register
from .delta import BottleneckConfig, BottleneckDelta, make_bottleneck

register(Method("bottleneck", BottleneckConfig, make_delta=make_bottleneck))

__all__ = ["BottleneckConfig", "BottleneckDelta"]
