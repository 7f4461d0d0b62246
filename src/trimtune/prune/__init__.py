"""Pruning with masks: importance → scope → granularity → schedule → masks on the wrapper layers."""

from ..core.masks import enforce_masks, keep_pruned, make_permanent, pruned_structures, remove_masks, sparsity
from . import gates
from .prune_model import PruneConfig, prune, select_layers
from .calibration import collect_input_norms, collect_taylor
from .gates import GateConfig, gates_to_masks, l0_penalty, runtime_skip
from .granularity import NM, Blocks, Columns, Element, Rows
from .heads import Heads
from .importance import Magnitude, Movement, Random, Taylor, Wanda
from .regularize import Regularizer, group_lasso_penalty, l1_penalty, prune_below
from .schedule import Pruner, PruneSchedule, PruningCallback
from .sparsity_report import SparsityReport, sparsity_report

__all__ = [
    "NM", "Blocks", "Columns", "Element", "GateConfig", "Heads", "Magnitude", "Movement", "PruneConfig", "PruneSchedule", "Pruner", "PruningCallback", "Random", "Regularizer", "Rows", "SparsityReport",
    "Taylor", "Wanda", "collect_input_norms", "collect_taylor", "enforce_masks", "gates_to_masks", "group_lasso_penalty", "l0_penalty", "l1_penalty", "keep_pruned", "make_permanent", "prune", "prune_below", "runtime_skip", "pruned_structures",
    "remove_masks", "select_layers", "sparsity", "sparsity_report",
]
