"""Prefix tuning (Li & Liang, 2021): trained key/value prefixes in every attention layer."""

from ...core.input_deltas.peft_files import load_prompt_adapter, save_prompt_adapter
from ...core.registry import Method, register
from .method import PrefixTuningConfig, apply_prefix_tuning

register(Method("prefix", PrefixTuningConfig, apply=apply_prefix_tuning, peft_type="PREFIX_TUNING",
                save=save_prompt_adapter, load=load_prompt_adapter, mergeable=False))

__all__ = ["PrefixTuningConfig"]
