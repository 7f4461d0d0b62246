"""Prompt tuning (Lester et al., 2021): trained virtual tokens prepended to the input embeddings."""

from ...core.input_deltas.peft_files import load_prompt_adapter, save_prompt_adapter
from ...core.registry import Method, register
from .method import PromptTuningConfig, apply_prompt_tuning

register(Method("prompt", PromptTuningConfig, apply=apply_prompt_tuning, peft_type="PROMPT_TUNING",
                save=save_prompt_adapter, load=load_prompt_adapter, mergeable=False))

__all__ = ["PromptTuningConfig"]
