"""trimtune: prune (trim) and parameter-efficiently fine-tune (tune) PyTorch and Hugging Face models.

This module is the public facade: what ``import trimtune as tt`` offers, every name imported
explicitly (so type checkers see ``tt.DoraConfig``), and the only door through which trimtune's own
application (the CLI's ``commands/``, ``recipes/``, the demo, reports) reaches the library; an
import-linter contract in ``pyproject.toml`` holds it so. Importing it registers every method.
``trimtune.outputs`` is the facade's second, smaller door: writing outputs that lose nothing.
"""

from .core.adapters import (
    active_adapters,
    adapter_config,
    adapter_configs,
    apply,
    delete_adapter,
    disable_adapters,
    set_adapter,
)
from .core.config import ConfigError
from .core.hotswap import hotswap_adapter
from .core.mixed_batch import mixed_batch
from .core.four_bit import QuantConfig
from .core.input_deltas.apply import fold
from .core.input_deltas.model_info import CACHE_ARGUMENTS
from .core.io.fingerprint import BaseMismatchError
from .core.io.peft_format import FormatError
from .core.method import Method, WeightDeltaMethod, register
from .core.registry import method_for_config, registered_methods
from .core.targets import TargetError, by_glob, by_names, by_regex, by_type
from .core.tuned_layer import TunedLayer
from .export import (
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
from .methods.adalora import AdaLoraConfig, adalora_ranks, adalora_update
from .methods.boft import BOFTConfig as BOFTConfig
from .methods.bottleneck import BottleneckConfig as BottleneckConfig
from .methods.diff import DiffConfig, DiffPenalty, diff_optimizer, diff_penalty, load_diff, project_diffs, save_diff
from .methods.dora import DoraConfig as DoraConfig
from .methods.hira import HiraConfig as HiraConfig
from .methods.hra import HRAConfig as HRAConfig
from .methods.ia3 import IA3Config as IA3Config
from .methods.ln_tuning import LNTuningConfig as LNTuningConfig
from .methods.loha import LoHaConfig as LoHaConfig
from .methods.lokr import LoKrConfig as LoKrConfig
from .methods.lora import LoraConfig as LoraConfig
from .methods.lora import loraplus_optimizer, trains_lora_factors
from .methods.oft import OFTConfig as OFTConfig
from .methods.p_tuning import PTuningConfig as PTuningConfig
from .methods.prefix import PrefixTuningConfig as PrefixTuningConfig
from .methods.prompt_tuning import PromptTuningConfig as PromptTuningConfig
from .methods.shira import ShiraConfig as ShiraConfig
from .methods.qlora import QLoraConfig, pack_4bit_for_cpu, quantize_base
from .methods.trainable_tokens import TrainableTokensConfig as TrainableTokensConfig
from .methods.vera import VeraConfig as VeraConfig
from .prune import (
    GateConfig,
    Magnitude,
    Movement,
    PruneConfig,
    Pruner,
    PruneSchedule,
    PruningCallback,
    Random,
    Taylor,
    Wanda,
    collect_input_norms,
    collect_taylor,
    keep_pruned,
    make_permanent,
    sparsity,
    sparsity_report,
)
from .prune.files import load_sparse, save_sparse
from .prune.prune_model import prune  # the verb tt.prune; the package stays importable as trimtune.prune
from .prune.sequential import SequentialConfig, prune_directory, prune_llm, prune_sequential, self_generated_samples
from .prune.structured import StructuredConfig, StructuredReport, shrink_llm, shrink_llm_directory
from .shrinking import ShrinkReport, shrink
from .training import (
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
    distributed_loader,
    evaluate,
    init_distributed,
    latest_checkpoint,
    linear_schedule,
    train,
)
from .training.batches import run_batch
from .training.distributed import parallel_model, unwrap_model
from .training.fsdp import is_sharded
from .training.generation_speed import generation_speed
from .training.loop import optimizer_steps
from .training.perplexity import perplexity, perplexity_of_file
from .verbs.adapters import merge, print_trainable_parameters, trainable_parameters, unload, unmerge
from .verbs.files import load_adapter, load_shrunk, save_adapter, save_shrunk

__version__ = "0.1.0"

__all__ = [
    # adapters: add, switch, merge, unload
    "apply", "set_adapter", "active_adapters", "adapter_config", "adapter_configs", "delete_adapter", "disable_adapters", "mixed_batch",
    "merge", "unmerge", "unload", "fold", "trainable_parameters", "print_trainable_parameters", "TunedLayer",
    "CACHE_ARGUMENTS",  # the names transformers gives the attention cache (prefix tuning rides on it)
    # adapter files
    "save_adapter", "load_adapter", "hotswap_adapter", "save_shrunk", "load_shrunk",
    # methods: the contract, the registry and every method's config
    "Method", "WeightDeltaMethod", "register", "method_for_config", "registered_methods",
    "QLoraConfig", "AdaLoraConfig", "DiffConfig", "GateConfig", "QuantConfig",  # every other method's config: below
    "adalora_ranks", "adalora_update", "DiffPenalty", "diff_optimizer", "diff_penalty", "project_diffs", "save_diff", "load_diff",
    "pack_4bit_for_cpu", "quantize_base", "loraplus_optimizer", "trains_lora_factors",
    # targets
    "by_glob", "by_names", "by_regex", "by_type",
    # pruning with masks
    "prune", "PruneConfig", "PruneSchedule", "Pruner", "PruningCallback", "Magnitude", "Movement", "Random", "Taylor", "Wanda",
    "collect_input_norms", "collect_taylor", "keep_pruned", "make_permanent", "sparsity", "sparsity_report", "save_sparse", "load_sparse",
    # large language models, block by block
    "SequentialConfig", "prune_llm", "prune_directory", "prune_sequential", "self_generated_samples",
    "StructuredConfig", "StructuredReport", "shrink_llm", "shrink_llm_directory",
    # physical shrinking
    "shrink", "ShrinkReport",
    # training and evaluation
    "train", "optimizer_steps", "run_batch", "Callback", "TrainContext", "TrainResult", "ClipConfig", "clip_gradients", "CheckpointConfig",
    "latest_checkpoint", "MetricsLogger", "linear_schedule", "DistillConfig", "Distiller", "evaluate", "accuracy", "perplexity",
    "perplexity_of_file", "generation_speed", "init_distributed", "distributed_loader", "parallel_model", "unwrap_model", "is_sharded",
    # files for the runtimes models are deployed with: GGUF (llama.cpp), ONNX (onnxruntime)
    "write_gguf", "write_onnx", "check_gguf_export", "check_gguf_tokenizer", "architecture_for_config", "output_type",
    "is_trimtune_gguf", "is_trimtune_onnx", "onnxruntime_difference",
    # errors
    "ConfigError", "ExportError", "TargetError", "FormatError", "BaseMismatchError", "CheckpointError", "CheckpointMismatchError", "NonFiniteLossError",
]
# Every registered method's config is public. A method whose package exports nothing else adds one line
# above, ``from .methods.NAME import NameConfig as NameConfig`` (the ``as`` form is what type checkers
# read as a re-export); that import also registers it, and its config joins ``__all__`` here.
__all__ += [c for c in (m.config.__name__ for m in registered_methods().values()) if c not in __all__]

