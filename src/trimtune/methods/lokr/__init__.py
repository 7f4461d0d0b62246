"""LoKr (KronA / LyCORIS): a change that is the Kronecker product of two small factors (see ``delta.py``).

It builds on LoHa's LyCORIS parts (``methods/loha/lycoris.py``: config fields, dropout, the weight-form
delta); ``layout.py`` splits a layer's widths into the factors' shapes. Files are peft's "LOKR" files.
"""

from ...core.method import WeightDeltaMethod, register
from .delta import LoKrConfig, LoKrDelta, make_lokr


@register
class LoKr(WeightDeltaMethod):
    name = "lokr"
    config = LoKrConfig
    peft_type = "LOKR"

    def make_delta(self, layer, config: LoKrConfig) -> LoKrDelta:
        return make_lokr(layer, config)


__all__ = ["LoKrConfig", "LoKrDelta", "make_lokr"]
