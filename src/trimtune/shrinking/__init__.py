"""Physical shrinking: remove pruned channels, filters, heads and FFN units for real."""

from .shrink_model import find_groups, shrink
from .apply import replay
from .files import load_shrunk, save_shrunk
from .graph import Group, Member, UntraceableError
from .shrink_report import ShrinkReport

__all__ = ["Group", "Member", "ShrinkReport", "UntraceableError", "find_groups", "load_shrunk", "replay", "save_shrunk", "shrink"]
