"""Input deltas: prompt tuning, P-tuning, prefix tuning (importing registers them)."""

from .apply import fold
from .p_tuning import PTuningConfig
from .peft_files import load_prompt_adapter, save_prompt_adapter
from .prefix import PrefixTuningConfig
from .prompt_tuning import PromptTuningConfig

__all__ = ["PTuningConfig", "PrefixTuningConfig", "PromptTuningConfig", "fold", "load_prompt_adapter", "save_prompt_adapter"]
