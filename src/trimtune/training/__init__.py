"""Training utilities: the loop, gradient clipping, callbacks, evaluation, LR schedules, checkpoints,
data-parallel helpers, metric logging."""

from .callbacks import Callback, TrainContext
from .checkpoint import (
    CheckpointConfig,
    CheckpointError,
    CheckpointMismatchError,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
)
from .clip import ClipConfig, clip_gradients
from .distill import DistillConfig, Distiller
from .distributed import DistributedInfo, distributed_loader, distributed_model, init_distributed, is_main_process
from .evaluate import accuracy, evaluate
from .loop import NonFiniteLossError, TrainResult, train
from .metrics_log import MetricsLogger
from .schedule import linear_schedule

__all__ = [
    "Callback",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointMismatchError",
    "ClipConfig",
    "DistillConfig",
    "Distiller",
    "DistributedInfo",
    "MetricsLogger",
    "NonFiniteLossError",
    "TrainContext",
    "TrainResult",
    "accuracy",
    "clip_gradients",
    "distributed_loader",
    "distributed_model",
    "evaluate",
    "init_distributed",
    "is_main_process",
    "latest_checkpoint",
    "linear_schedule",
    "list_checkpoints",
    "read_checkpoint",
    "train",
]
