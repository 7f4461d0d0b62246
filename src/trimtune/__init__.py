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
from .deltas.lora import LoraConfig
from .io import BaseMismatchError, FormatError, load_adapter, save_adapter
from .layers import TunedLayer
from .targets import TargetError, by_glob, by_names, by_regex, by_type

__version__ = "0.1.0"

__all__ = [
    "BaseMismatchError",
    "FormatError",
    "ConfigError",
    "LoraConfig",
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
    "load_adapter",
    "merge",
    "print_trainable_parameters",
    "save_adapter",
    "set_adapter",
    "trainable_parameters",
    "unload",
    "unmerge",
]
