"""What is pruned as one unit: an entry, an N:M group slot, a row, an input channel, a head, a block.

A granularity turns element scores into ``Units``: one score per unit, which units still live, and
how to zero a chosen set of them on the layers' masks (recording the indices of pruned structures
for the later physical shrink). Selection (``select``) follows ``torch.nn.utils.prune`` exactly:
unstructured pruning drops the ``k`` lowest-scoring surviving units (``topk(largest=False)``),
structured pruning keeps the ``n - k`` highest (``topk(largest=True)``), so ties resolve the same.
Everything structural works in the canonical weight layout ``(out, in, *kernel)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.config import ConfigError, check_positive_int
from ..core.masks import canonical_mask, record_pruned, set_canonical_mask
from ..core.tuned_layer import TunedLayer
from .row_selection import lowest_per_row


@dataclass
class Units:
    label: str  # layer name, or the attention block for heads
    scores: torch.Tensor  # 1-D, one per unit
    alive: torch.Tensor  # 1-D bool
    zero: Callable[[torch.Tensor], None]  # zero these unit indices on the masks
    keep_largest: bool = False  # structured: torch keeps the top n-k rather than dropping the bottom k
    layers: list[str] = field(default_factory=list)
    rows: int = 0  # > 0: units form this many equal rows, each losing the same fraction (Wanda's groups)

    def select(self, k: int) -> torch.Tensor:
        """Indices of the ``k`` surviving units to prune."""
        if self.rows:
            return self._select_per_row(k)
        alive_idx = self.alive.nonzero().flatten()
        scores = self.scores[alive_idx]
        if k == 0:
            return alive_idx[:0]
        if self.keep_largest:
            keep = torch.topk(scores, len(alive_idx) - k, largest=True).indices
            drop = torch.ones(len(alive_idx), dtype=torch.bool)
            drop[keep] = False
            return alive_idx[drop]
        return alive_idx[torch.topk(scores, k, largest=False).indices]

    def _select_per_row(self, k: int) -> torch.Tensor:
        """Each row prunes ``k / alive`` of its own surviving units, lowest scores first."""
        alive = self.alive.view(self.rows, -1)
        alive_per_row = alive.sum(1)
        dead = alive.shape[1] - alive_per_row
        quota = dead + torch.round(alive_per_row * (k / max(int(alive_per_row.sum()), 1))).long()
        return lowest_per_row(self.scores.view(self.rows, -1), alive, quota).view(-1).nonzero().flatten()


def reduce(scores: torch.Tensor, p: float, dims) -> torch.Tensor:
    return torch.linalg.vector_norm(scores.float(), ord=p, dim=dims)


def _canonical_scores(layer: TunedLayer, scores: torch.Tensor) -> torch.Tensor:
    return layer.kind.to_canonical(scores)


class Granularity:
    """Per-layer granularities implement ``layer_units``; model-level ones override ``unit_sets``."""

    structured = False

    def unit_sets(self, model, layers: dict[str, TunedLayer], importance, norm) -> list[Units]:
        return [self.layer_units(name, layer, importance(name, layer), norm) for name, layer in layers.items()]

    def layer_units(self, name, layer, scores, norm) -> Units:
        raise NotImplementedError


class Element(Granularity):
    """Unstructured: every weight entry is a unit (native layout, as torch flattens it).

    ``per_output=True`` compares entries only within each output unit (every output unit loses
    the same fraction; the comparison group Wanda uses); layer scope only."""

    def __init__(self, per_output: bool = False):
        self.per_output = per_output

    def layer_units(self, name, layer, scores, norm):
        if self.per_output:
            return self._per_output_units(name, layer, scores)
        mask = layer.weight_mask
        alive = torch.ones(layer.weight.numel(), dtype=torch.bool) if mask is None else (mask.flatten() == 1).cpu()

        def zero(idx):
            new = torch.ones_like(layer.weight) if layer.weight_mask is None else layer.weight_mask.clone()
            new.view(-1)[idx.to(new.device)] = 0
            layer.set_mask(new)

        return Units(name, scores.flatten().cpu(), alive, zero, layers=[name])

    def _per_output_units(self, name, layer, scores):
        """Units in canonical (out, in·k) order, one row per output unit."""
        canon_scores = _canonical_scores(layer, scores).flatten(1)
        alive = (canonical_mask(layer).flatten(1) == 1).flatten().cpu()

        def zero(idx):
            canon = canonical_mask(layer).contiguous().clone()  # Conv1D: canonical is a transposed view
            canon.view(-1)[idx.to(canon.device)] = 0
            set_canonical_mask(layer, canon)

        return Units(name, canon_scores.flatten().cpu(), alive, zero, layers=[name], rows=canon_scores.shape[0])

    def __repr__(self):
        return f"Element(per_output={self.per_output})"


class _Axis(Granularity):
    """Whole slices along one canonical axis: 0 = rows / output channels / filters, 1 = input channels."""

    structured = True
    axis = 0
    record_key = "out"

    def layer_units(self, name, layer, scores, norm):
        canon = _canonical_scores(layer, scores)
        if canon.dim() < 2:
            raise ValueError(f"{name} has a 1-D weight; structured pruning needs rows and columns")
        other = [d for d in range(canon.dim()) if d != self.axis]
        mask = canonical_mask(layer)
        alive = (mask.sum(dim=other) != 0).cpu()

        def zero(idx):
            new = canonical_mask(layer).clone()
            new.index_fill_(self.axis, idx.to(new.device), 0)
            set_canonical_mask(layer, new)
            record_pruned(layer, self.record_key, idx.tolist())

        return Units(name, reduce(canon, norm, other).cpu(), alive, zero, keep_largest=True, layers=[name])


class Rows(_Axis):
    """Output units: rows of a linear weight, filters of a convolution."""

    def __repr__(self):
        return "Rows()"


class Columns(_Axis):
    """Input units: columns of a linear weight, input channels of a convolution."""

    axis = 1
    record_key = "in"

    def __repr__(self):
        return "Columns()"


class Blocks(Granularity):
    """2-D blocks of ``rows x cols`` on the canonical weight viewed as (out, in · kernel)."""

    def __init__(self, rows: int = 4, cols: int = 4):
        check_positive_int("Blocks rows", rows)
        check_positive_int("Blocks cols", cols)
        self.rows, self.cols = rows, cols

    def _blocked(self, name, matrix):
        out, inn = matrix.shape
        if out % self.rows or inn % self.cols:
            raise ConfigError(
                f"{name}: weight of shape ({out}, {inn}) is not divisible into {self.rows}x{self.cols} blocks; "
                "choose block sizes that divide both dimensions"
            )
        return matrix.reshape(out // self.rows, self.rows, inn // self.cols, self.cols).transpose(1, 2)

    def layer_units(self, name, layer, scores, norm):
        blocked = self._blocked(name, _canonical_scores(layer, scores).flatten(1))
        grid = blocked.shape[:2]
        alive = (self._blocked(name, canonical_mask(layer).flatten(1)).sum(dim=(2, 3)) != 0).flatten().cpu()

        def zero(idx):
            canon = canonical_mask(layer).clone()
            view = self._blocked(name, canon.flatten(1))  # a view: writes land in canon
            keep = torch.ones(grid, dtype=canon.dtype, device=canon.device).view(-1)
            keep[idx.to(canon.device)] = 0
            view.mul_(keep.view(*grid, 1, 1))
            set_canonical_mask(layer, canon)

        return Units(name, reduce(blocked, norm, (2, 3)).flatten().cpu(), alive, zero, keep_largest=True, layers=[name])

    def __repr__(self):
        return f"Blocks({self.rows}, {self.cols})"


class NM(Granularity):
    """N:M semi-structured sparsity: in every M consecutive inputs of an output unit keep N.

    ``amount`` does not apply (the sparsity is 1 - N/M); already pruned entries go first."""

    fixed = True

    def __init__(self, n: int = 2, m: int = 4):
        check_positive_int("N:M n", n)
        check_positive_int("N:M m", m)
        if n >= m:
            raise ConfigError(f"N:M needs N < M (keep N of every M), got {n}:{m}")
        self.n, self.m = n, m

    def mask_for(self, name, layer, scores) -> torch.Tensor:
        canon = _canonical_scores(layer, scores).float().clone()
        mask = canonical_mask(layer)
        canon[mask == 0] = -float("inf")
        inputs = canon.shape[1]
        if inputs % self.m:
            raise ConfigError(f"{name}: input dimension {inputs} is not divisible by M={self.m} for {self.n}:{self.m} sparsity")
        groups = canon.movedim(1, -1)  # (out, *kernel, in): groups run along the input dimension
        flat = groups.reshape(-1, self.m)
        keep = torch.zeros_like(flat)
        keep.scatter_(1, torch.topk(flat, self.n, dim=1).indices, 1)
        new = keep.view(groups.shape).movedim(-1, 1).to(mask.dtype)
        return new * mask

    def apply(self, name, layer, scores) -> None:
        set_canonical_mask(layer, self.mask_for(name, layer, scores))

    def __repr__(self):
        return f"NM({self.n}, {self.m})"
