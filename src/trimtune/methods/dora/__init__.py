"""DoRA (Liu et al., 2024): weight-decomposed LoRA, a trained magnitude per output unit (see ``delta.py``).

Its files are peft's LoRA files with ``use_dora: true``: DoRA claims those, LoRA the others.
"""

from ...core.method import WeightDeltaMethod, register
from .delta import DoraConfig, DoraDelta, make_dora


@register
class Dora(WeightDeltaMethod):
    name = "dora"
    config = DoraConfig
    peft_type = "LORA"

    def make_delta(self, layer, config: DoraConfig) -> DoraDelta:
        return make_dora(layer, config)

    def claims_peft(self, peft_config: dict) -> bool:
        return peft_config.get("use_dora", False) is True


__all__ = ["DoraConfig", "DoraDelta", "make_dora"]
