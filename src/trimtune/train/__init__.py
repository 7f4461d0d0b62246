"""Training utilities: the loop, gradient clipping, callbacks, evaluation, LR schedules."""

from .callbacks import Callback, TrainContext
from .checkpoint import CheckpointConfig, CheckpointError, CheckpointMismatchError, latest_checkpoint
from .clip import ClipConfig, clip_gradients
from .evaluate import accuracy, evaluate
from .metrics_log import MetricsLogger
from .loop import NonFiniteLossError, TrainResult, train
from .schedule import linear_schedule

__all__ = [
    "Callback",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointMismatchError",
    "ClipConfig",
    "MetricsLogger",
    "NonFiniteLossError",
    "TrainContext",
    "TrainResult",
    "accuracy",
    "clip_gradients",
    "evaluate",
    "latest_checkpoint",
    "linear_schedule",
    "train",
]
