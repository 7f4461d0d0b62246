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
from .deltas.ia3 import IA3Config
from .deltas.lora import LoraConfig
from .layers import TunedLayer
from .shrinking import ShrinkReport, load_shrunk, save_shrunk, shrink
from .targets import TargetError, by_glob, by_names, by_regex, by_type

__version__ = "0.1.0"

__all__ = [
    "BottleneckConfig",
    "ConfigError",
    "IA3Config",
    "LoraConfig",
    "ShrinkReport",
    "TargetError",
    "TunedLayer",
    "active_adapters",
    "adapter_config",
    "apply",
    "by_glob",
    "by_names",
    "by_regex",
    "by_type",
    "delete_adapter",
    "disable_adapters",
    "load_shrunk",
    "merge",
    "print_trainable_parameters",
    "save_shrunk",
    "set_adapter",
    "shrink",
    "trainable_parameters",
    "unload",
    "unmerge",
]
