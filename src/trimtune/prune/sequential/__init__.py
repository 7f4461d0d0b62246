"""Prune large language models one transformer block at a time (SparseGPT, Wanda, magnitude, OWL),
in memory (``prune_sequential``) or streaming the weights from disk (``prune_directory``; ``prune_llm``
checks the output first and makes the calibration only then), calibrated on
token ids in any of the forms ``samples.py`` takes, or on the model's own text (``self_generated_samples``)."""

from .config import SequentialConfig
from .layouts import UnknownLayoutError, layout_of, sequential_types
from .oneshot import prune_llm
from .pipeline import prune_sequential
from .self_calib import self_generated_samples
from .stream import prune_directory

__all__ = ["SequentialConfig", "UnknownLayoutError", "layout_of", "prune_directory", "prune_llm", "prune_sequential", "self_generated_samples", "sequential_types"]
