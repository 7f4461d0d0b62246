"""P-tuning (Liu et al., 2021): virtual tokens produced by a small trained encoder (MLP or LSTM)."""

from ...core.input_deltas.method import InputDeltaMethod
from ...core.method import register
from .method import PTuningConfig, apply_p_tuning


@register
class PTuning(InputDeltaMethod):
    name = "p-tuning"
    config = PTuningConfig
    peft_type = "P_TUNING"

    def apply(self, model, config: PTuningConfig, name: str) -> None:
        apply_p_tuning(model, config, name)


__all__ = ["PTuningConfig"]
