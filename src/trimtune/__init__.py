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
from .deltas.adalora import AdaLoraConfig
from .deltas.adalora_budget import adalora_ranks, adalora_update
from .deltas.bottleneck import BottleneckConfig
from .deltas.diff import DiffConfig
from .deltas.ia3 import IA3Config
from .deltas.lora import LoraConfig
from .deltas.qlora import QLoraConfig
from .diff_pruning import diff_penalty, project_diffs
from .layers import TunedLayer
from .quant import QuantConfig, quantize_base
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
    "AdaLoraConfig",
    "BottleneckConfig",
    "Callback",
    "ClipConfig",
    "ConfigError",
    "DiffConfig",
    "IA3Config",
    "LoraConfig",
    "QLoraConfig",
    "QuantConfig",
    "NonFiniteLossError",
    "TargetError",
    "TrainContext",
    "TrainResult",
    "TunedLayer",
    "accuracy",
    "active_adapters",
    "adalora_ranks",
    "adalora_update",
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
    "linear_schedule",
    "merge",
    "print_trainable_parameters",
    "quantize_base",
    "project_diffs",
    "set_adapter",
    "train",
    "trainable_parameters",
    "unload",
    "unmerge",
]
