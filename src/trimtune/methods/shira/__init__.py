"""SHiRA (Bhardwaj et al., 2024): a sparse high-rank adapter, a fixed random set of a weight's entries trained (see ``delta.py``).

``config.py``: ShiraConfig and its peft file fields; ``mask.py``: peft's seeded random choice of entries;
``delta.py``: the per-layer delta. Files are peft's "SHIRA" files (values + indices).
"""

from ...core.method import WeightDeltaMethod, register
from .config import ShiraConfig
from .delta import ShiraDelta, make_shira


@register
class Shira(WeightDeltaMethod):
    name = "shira"
    config = ShiraConfig
    peft_type = "SHIRA"

    def make_delta(self, layer, config: ShiraConfig) -> ShiraDelta:
        return make_shira(layer, config)


__all__ = ["ShiraConfig", "ShiraDelta", "make_shira"]
