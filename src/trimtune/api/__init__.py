"""The public verbs, in one place: what ``import trimtune as tt`` offers.

A thin facade over the layers below: adapter verbs (``core.adapters``, ``api.adapters``), files
(``api.files`` and each method's own), the method configs (``methods/``), pruning, shrinking and
training. Importing it registers every method.
"""

from .. import methods  # noqa: F401  (registers every method)
from ..core.adapters import active_adapters, adapter_config, apply, delete_adapter, disable_adapters, set_adapter
from ..core.config import ConfigError
from ..core.registry import METHODS as _registered_methods
from ..core.four_bit import QuantConfig
from ..core.input_deltas.apply import fold
from ..core.io.fingerprint import BaseMismatchError
from ..core.io.peft_format import FormatError
from ..core.targets import TargetError, by_glob, by_names, by_regex, by_type
from ..core.tuned_layer import TunedLayer
from ..export import (
    ExportError,
    architecture_for_config,
    check_gguf_export,
    check_gguf_tokenizer,
    is_trimtune_gguf,
    is_trimtune_onnx,
    onnxruntime_difference,
    output_type,
    write_gguf,
    write_onnx,
)
from ..methods.adalora import AdaLoraConfig, adalora_ranks, adalora_update
from ..methods.bottleneck import BottleneckConfig
from ..methods.diff import DiffConfig, diff_penalty, load_diff, project_diffs, save_diff
from ..methods.ia3 import IA3Config
from ..methods.lora import LoraConfig
from ..methods.p_tuning import PTuningConfig
from ..methods.prefix import PrefixTuningConfig
from ..methods.prompt_tuning import PromptTuningConfig
from ..methods.qlora import QLoraConfig, pack_4bit_for_cpu, quantize_base
from ..prune import (
    GateConfig,
    PruneConfig,
    Pruner,
    PruneSchedule,
    PruningCallback,
    keep_pruned,
    make_permanent,
    sparsity_report,
)
from ..prune.api import prune  # the verb: tt.prune(model, cfg); the package stays importable as trimtune.prune
from ..prune.files import load_sparse, save_sparse
from ..prune.sequential import SequentialConfig, prune_directory, prune_sequential, self_generated_samples
from ..prune.structured import StructuredConfig, StructuredReport, shrink_llm, shrink_llm_directory
from ..shrinking import ShrinkReport, shrink
from ..training import (
    Callback,
    CheckpointConfig,
    CheckpointError,
    CheckpointMismatchError,
    ClipConfig,
    DistillConfig,
    Distiller,
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
from ..training.generation_speed import generation_speed
from ..training.perplexity import perplexity
from .adapters import merge, print_trainable_parameters, trainable_parameters, unload, unmerge
from .files import load_adapter, load_shrunk, save_adapter, save_shrunk

# Every registered method's config is public (tt.DoraConfig, tt.VeraConfig, ...): a new method adds no line here.
globals().update({method.config.__name__: method.config for method in _registered_methods.values()})

__all__ = sorted(n for n in dir() if not n.startswith("_") and n not in ("methods", "adapters", "files"))
