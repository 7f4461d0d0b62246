"""trimtune: prune (trim) and parameter-efficiently fine-tune (tune) PyTorch and Hugging Face models."""

from types import ModuleType as _ModuleType

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
from .io import BaseMismatchError, FormatError, load_adapter, save_adapter
from .io.diff_artifact import load_diff, save_diff
from .layers import TunedLayer
from .quant import QuantConfig, quantize_base
from .prompts import (
    PrefixTuningConfig,
    PromptTuningConfig,
    PTuningConfig,
    fold,
)
from .io.sparse import load_sparse, save_sparse
from .prune import (
    GateConfig,
    PruneConfig,
    PruneSchedule,
    Pruner,
    PruningCallback,
    keep_pruned,
    make_permanent,
    sparsity_report,
)
from .shrinking import ShrinkReport, load_shrunk, save_shrunk, shrink
from .targets import TargetError, by_glob, by_names, by_regex, by_type
from .train import (
    Callback,
    CheckpointConfig,
    CheckpointError,
    CheckpointMismatchError,
    ClipConfig,
    MetricsLogger,
    NonFiniteLossError,
    TrainContext,
    TrainResult,
    accuracy,
    clip_gradients,
    evaluate,
    latest_checkpoint,
    linear_schedule,
    train,
)

__version__ = "0.1.0"

# Everything imported above is the public API (derived, so parallel additions never conflict here).
__all__ = sorted(n for n, v in list(globals().items()) if not n.startswith("_") and not isinstance(v, _ModuleType))
