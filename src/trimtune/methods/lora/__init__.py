"""LoRA (Hu et al., 2021): a low-rank update added to frozen weights (see ``delta.py``)."""

from ...core.method import WeightDeltaMethod, register
from .delta import LoraConfig, LoraDelta, MaskedLoraDelta, make_lora
from .loraplus import loraplus_groups, loraplus_optimizer, trains_lora_factors
from .parameters import ParameterLoraDelta, make_parameter_lora


@register
class Lora(WeightDeltaMethod):
    name = "lora"
    config = LoraConfig
    peft_type = "LORA"

    def make_delta(self, layer, config: LoraConfig) -> LoraDelta:
        return make_lora(layer, config)

    def make_parameter_delta(self, parameter, full_name: str, host, config: LoraConfig) -> ParameterLoraDelta:
        return make_parameter_lora(parameter, full_name, host, config)

    def claims_peft(self, peft_config: dict) -> bool:
        return not peft_config.get("use_dora", False)  # peft stores DoRA as LoRA with use_dora


__all__ = ["LoraConfig", "LoraDelta", "MaskedLoraDelta", "ParameterLoraDelta", "loraplus_groups", "loraplus_optimizer", "make_lora", "trains_lora_factors"]
