"""BOFT (Liu et al., 2024): OFT whose rotation is a butterfly product of block-diagonal orthogonal factors,
with a scale per output unit (see ``delta.py``; ``butterfly.py`` builds the factors and applies them).
It builds on OFT's block rotation (``methods/oft/rotation.py``). Files are peft's "BOFT" files.
"""

from ...core.method import WeightDeltaMethod, register
from .config import BOFTConfig
from .delta import BoftConvDelta, BoftLinearDelta, BoftRotation, make_boft


@register
class Boft(WeightDeltaMethod):
    name = "boft"
    config = BOFTConfig
    peft_type = "BOFT"

    def make_delta(self, layer, config: BOFTConfig) -> BoftRotation:
        return make_boft(layer, config)


__all__ = ["BOFTConfig", "BoftConvDelta", "BoftLinearDelta", "BoftRotation", "make_boft"]
