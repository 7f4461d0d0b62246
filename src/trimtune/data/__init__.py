"""Data: JSON-lines reading, text classification batches, and the demo text set shipped with trimtune."""

from .demo_texts import DEMO_LABELS, demo_split, load_demo_texts
from .jsonl import read_jsonl
from .text import text_loader

__all__ = ["DEMO_LABELS", "demo_split", "load_demo_texts", "read_jsonl", "text_loader"]
