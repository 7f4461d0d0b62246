"""HRA (Yuan et al., 2024): the layer's weight times a product of r Householder reflections (see ``delta.py``).

``config.py``: HRAConfig and its peft file fields; ``reflections.py``: the product of reflections in
compact form; ``delta.py``: the per-layer delta. Files are peft's "HRA" files.
"""

from ...core.method import WeightDeltaMethod, register
from .config import HRAConfig
from .delta import HRADelta, make_hra


@register
class HRA(WeightDeltaMethod):
    name = "hra"
    config = HRAConfig
    peft_type = "HRA"

    def make_delta(self, layer, config: HRAConfig) -> HRADelta:
        return make_hra(layer, config)


__all__ = ["HRAConfig", "HRADelta", "make_hra"]
