"""AdaLoRA (Zhang et al., 2023): SVD-form low-rank deltas whose ranks a budget schedule prunes."""

from ...core.method import Method, register
from .apply import apply_adalora
from .budget import adalora_ranks, adalora_update
from .delta import AdaLoraConfig, AdaLoraDelta


@register
class AdaLora(Method):
    name = "adalora"
    config = AdaLoraConfig
    peft_type = "ADALORA"

    def apply(self, model, config: AdaLoraConfig, name: str) -> None:
        apply_adalora(model, config, name)  # its rank budget rides on the model: trimtune.train runs it


__all__ = ["AdaLoraConfig", "AdaLoraDelta", "adalora_ranks", "adalora_update"]
