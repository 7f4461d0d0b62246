"""trimtune: prune (trim) and parameter-efficiently fine-tune (tune) PyTorch and Hugging Face models."""

from .api import (
    active_adapters,
    adapter_config,
    apply,
    delete_adapter,
    disable_adapters,
    merge,
    print_trainable_parameters,
    set_adapter,
    trainable_parameters,
    unload,
    unmerge,
)
from .config import ConfigError
from .deltas.bottleneck import BottleneckConfig
from .deltas.diff import DiffConfig
from .deltas.ia3 import IA3Config
from .deltas.lora import LoraConfig
from .diff_pruning import diff_penalty, project_diffs
from .io import BaseMismatchError, FormatError, load_adapter, save_adapter
from .layers import TunedLayer
from .prompts import (
    PrefixTuningConfig,
    PromptTuningConfig,
    PTuningConfig,
    fold,
    load_prompt_adapter,
    save_prompt_adapter,
)
from .targets import TargetError, by_glob, by_names, by_regex, by_type
from .train import (
    Callback,
    ClipConfig,
    NonFiniteLossError,
    TrainContext,
    TrainResult,
    accuracy,
    clip_gradients,
    evaluate,
    linear_schedule,
    train,
)

__version__ = "0.1.0"

__all__ = [
    "BaseMismatchError",
    "BottleneckConfig",
    "Callback",
    "ClipConfig",
    "ConfigError",
    "DiffConfig",
    "FormatError",
    "IA3Config",
    "LoraConfig",
    "NonFiniteLossError",
    "PTuningConfig",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "TargetError",
    "TrainContext",
    "TrainResult",
    "TunedLayer",
    "accuracy",
    "active_adapters",
    "adapter_config",
    "apply",
    "by_glob",
    "by_names",
    "by_regex",
    "by_type",
    "clip_gradients",
    "delete_adapter",
    "diff_penalty",
    "disable_adapters",
    "evaluate",
    "fold",
    "linear_schedule",
    "load_adapter",
    "load_prompt_adapter",
    "merge",
    "print_trainable_parameters",
    "project_diffs",
    "save_adapter",
    "save_prompt_adapter",
    "set_adapter",
    "train",
    "trainable_parameters",
    "unload",
    "unmerge",
]
