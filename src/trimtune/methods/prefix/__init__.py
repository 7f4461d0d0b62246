"""Prefix tuning (Li & Liang, 2021): trained key/value prefixes in every attention layer."""

from ...core.input_deltas.method import InputDeltaMethod
from ...core.method import register
from .method import PrefixTuningConfig, apply_prefix_tuning


@register
class PrefixTuning(InputDeltaMethod):
    name = "prefix"
    config = PrefixTuningConfig
    peft_type = "PREFIX_TUNING"

    def apply(self, model, config: PrefixTuningConfig, name: str) -> None:
        apply_prefix_tuning(model, config, name)


__all__ = ["PrefixTuningConfig"]
