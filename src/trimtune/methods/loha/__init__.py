"""LoHa (FedPara / LyCORIS): a change that is the Hadamard product of two low-rank matrices (see ``delta.py``).

``lycoris.py`` holds what the LyCORIS family shares; LoKr (``methods/lokr``) builds on it. Files are
peft's "LOHA" files.
"""

from ...core.method import WeightDeltaMethod, register
from .delta import LoHaConfig, LoHaDelta, make_loha


@register
class LoHa(WeightDeltaMethod):
    name = "loha"
    config = LoHaConfig
    peft_type = "LOHA"

    def make_delta(self, layer, config: LoHaConfig) -> LoHaDelta:
        return make_loha(layer, config)


__all__ = ["LoHaConfig", "LoHaDelta", "make_loha"]
