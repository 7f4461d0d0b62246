"""P-tuning (Liu et al., 2021): virtual tokens produced by a small trained encoder (MLP or LSTM)."""

from ...core.input_deltas.peft_files import load_prompt_adapter, save_prompt_adapter
from ...core.registry import Method, register
from .method import PTuningConfig, apply_p_tuning

register(Method("p-tuning", PTuningConfig, apply=apply_p_tuning, peft_type="P_TUNING",
                save=save_prompt_adapter, load=load_prompt_adapter, mergeable=False))

__all__ = ["PTuningConfig"]
