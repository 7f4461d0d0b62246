"""LoRA (Hu et al., 2021): a low-rank update added to frozen weights (see ``delta.py``), optionally
started from the base weight itself (PiSSA, OLoRA: ``base_inits.py``, ``residual.py``) or from
calibration batches (LoRA-GA, from the gradient: ``gradient_init.py``; CorDA, from the inputs'
covariance: ``context_init.py``)."""

from ...core.adapters import apply_weight_method
from ...core.io.peft_files import save_weight_adapter
from ...core.method import WeightDeltaMethod, register
from .base_inits import rewrites_base
from .context_init import input_covariances
from .delta import LoraConfig, LoraDelta, MaskedLoraDelta
from .gradient_init import mean_gradients
from .loraplus import loraplus_groups, loraplus_optimizer, trains_lora_factors
from .make import make_lora
from .parameters import ParameterLoraDelta, make_parameter_lora
from .plain_lora import as_plain_lora
from .residual import check_rewritable


@register
class Lora(WeightDeltaMethod):
    name = "lora"
    config = LoraConfig
    peft_type = "LORA"

    def make_delta(self, layer, config: LoraConfig) -> LoraDelta:
        return make_lora(layer, config)

    def make_parameter_delta(self, parameter, full_name: str, host, config: LoraConfig) -> ParameterLoraDelta:
        return make_parameter_lora(parameter, full_name, host, config)

    def apply(self, model, config: LoraConfig, name: str) -> None:
        if not rewrites_base(config.init):
            return super().apply(model, config, name)
        targets = check_rewritable(model, config)  # every target checked before the first weight is rewritten
        statistics = _measure(model, targets, config)
        apply_weight_method(model, config, name, lambda layer, c: make_lora(layer, c, statistics.get(layer.module_name)))

    def save(self, model, path, name):
        with as_plain_lora(model, name):  # a rewritten base: the file is for the original one, as peft's conversion
            return save_weight_adapter(model, path, name)

    def claims_peft(self, peft_config: dict) -> bool:
        return not peft_config.get("use_dora", False)  # peft stores DoRA as LoRA with use_dora


def _measure(model, targets: list[str], config: LoraConfig) -> dict:
    """What a data-driven init needs per target, from the calibration batches (nothing for the others)."""
    if config.init == "lora_ga":
        return mean_gradients(model, targets, config.init_batches)
    if config.init == "corda":
        return input_covariances(model, targets, config.init_batches)
    return {}


__all__ = ["LoraConfig", "LoraDelta", "MaskedLoraDelta", "ParameterLoraDelta", "loraplus_groups", "loraplus_optimizer", "make_lora", "trains_lora_factors"]
