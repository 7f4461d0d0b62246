"""HiRA (Huang et al., 2025): a high-rank change, the frozen weight times a low-rank product element-wise (see ``delta.py``).

``config.py``: HiraConfig and its peft file fields; ``delta.py``: the per-layer delta. Files are peft's "HIRA" files.
"""

from ...core.method import WeightDeltaMethod, register
from .config import HiraConfig
from .delta import HiraDelta, make_hira


@register
class Hira(WeightDeltaMethod):
    name = "hira"
    config = HiraConfig
    peft_type = "HIRA"

    def make_delta(self, layer, config: HiraConfig) -> HiraDelta:
        return make_hira(layer, config)


__all__ = ["HiraConfig", "HiraDelta", "make_hira"]
