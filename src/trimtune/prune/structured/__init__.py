"""Structured LLM compression: fewer heads, FFN channels, hidden channels and blocks, chosen from
calibration activations block by block, repaired, and written as a plain Hugging Face model, in
memory (``shrink_llm``) or streamed from one directory to another (``shrink_llm_directory``)."""

from .config import StructuredConfig
from .pipeline import shrink_llm
from .stream import shrink_llm_directory
from .report import StructuredReport

__all__ = ["StructuredConfig", "StructuredReport", "shrink_llm", "shrink_llm_directory"]
