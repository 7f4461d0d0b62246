"""OFT (Qiu et al., 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning"): a block-diagonal
orthogonal rotation of each target's inputs (see ``delta.py``; ``rotation.py`` builds the blocks).
Files are peft's "OFT" files (peft >= 0.14's layout: ``oft_R.weight`` holds each block's upper triangle).
"""

from ...core.method import WeightDeltaMethod, register
from .config import OFTConfig
from .delta import OftConvDelta, OftLinearDelta, OftRotation, make_oft


@register
class Oft(WeightDeltaMethod):
    name = "oft"
    config = OFTConfig
    peft_type = "OFT"

    def make_delta(self, layer, config: OFTConfig) -> OftRotation:
        return make_oft(layer, config)


__all__ = ["OFTConfig", "OftConvDelta", "OftLinearDelta", "OftRotation", "make_oft"]
