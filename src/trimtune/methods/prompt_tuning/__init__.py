"""Prompt tuning (Lester et al., 2021): trained virtual tokens prepended to the input embeddings."""

from ...core.input_deltas.method import InputDeltaMethod
from ...core.method import register
from .method import PromptTuningConfig, apply_prompt_tuning


@register
class PromptTuning(InputDeltaMethod):
    name = "prompt"
    config = PromptTuningConfig
    peft_type = "PROMPT_TUNING"

    def apply(self, model, config: PromptTuningConfig, name: str) -> None:
        apply_prompt_tuning(model, config, name)


__all__ = ["PromptTuningConfig"]
