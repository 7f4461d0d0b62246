"""Prune large language models one transformer block at a time (SparseGPT, Wanda, magnitude, OWL),
in memory (``prune_sequential``) or streaming the weights from disk (``prune_directory``)."""

from .config import SequentialConfig
from .layouts import UnknownLayoutError, layout_of, sequential_types
from .pipeline import prune_sequential
from .stream import prune_directory

__all__ = ["SequentialConfig", "UnknownLayoutError", "layout_of", "prune_directory", "prune_sequential", "sequential_types"]
