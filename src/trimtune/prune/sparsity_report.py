"""What a pruned model looks like, per layer: shape, sparsity, and which output units (rows,
filters), input units (channels) and heads are entirely zero — the indices, not just a count.
``sparsity_report(model)`` returns a ``SparsityReport``: ``.table()`` for the terminal, ``.to_json()``."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..core.masks import pruned_structures
from ..core.tuned_layer import TunedLayer


@dataclass
class LayerSparsity:
    name: str
    shape: list[int]
    zeros: int
    total: int
    zero_out: list[int]  # output units (canonical rows / filters) that are entirely zero
    zero_in: list[int]  # input units (canonical columns / channels) that are entirely zero
    heads: list[int] = field(default_factory=list)  # heads recorded as pruned

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0


@dataclass
class SparsityReport:
    layers: list[LayerSparsity]

    @property
    def zeros(self) -> int:
        return sum(layer.zeros for layer in self.layers)

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        rows = [{**asdict(layer), "sparsity": layer.sparsity} for layer in self.layers]
        return {"layers": rows, "total": {"zeros": self.zeros, "total": self.total, "sparsity": self.sparsity}}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self, max_indices: int = 12) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="sparsity by layer")
        for column in ("layer", "shape", "sparsity", "zero out units", "zero in units", "heads"):
            table.add_column(column)
        for layer in self.layers:
            table.add_row(
                layer.name, "x".join(map(str, layer.shape)), f"{100 * layer.sparsity:.1f}%",
                _indices(layer.zero_out, max_indices), _indices(layer.zero_in, max_indices), _indices(layer.heads, max_indices),
            )
        table.add_row("total", "", f"{100 * self.sparsity:.1f}%", "", "", "", style="bold")
        buffer = io.StringIO()
        Console(file=buffer, width=140, color_system=None).print(table)
        return buffer.getvalue()


def _indices(values: list[int], limit: int) -> str:
    if not values:
        return "-"
    shown = ", ".join(map(str, values[:limit]))
    return f"{len(values)}: [{shown}{', …' if len(values) > limit else ''}]"


def _zeros(layer: TunedLayer) -> torch.Tensor:
    """Where the effective weight W ⊙ M is zero, as bool ops (no float copy of the weight: on a
    streamed LLM block that copy was the run's peak)."""
    zero = layer.weight.detach() == 0
    return zero | ~layer.weight_mask.bool() if layer.weight_mask is not None else zero


@torch.no_grad()
def sparsity_report(model: nn.Module, only_pruned: bool = True) -> SparsityReport:
    """Per wrapped layer (only those with a mask or a structure record, unless ``only_pruned=False``)."""
    rows = []
    for name, layer in model.named_modules():
        if not isinstance(layer, TunedLayer):
            continue
        record = pruned_structures(layer)
        if only_pruned and layer.weight_mask is None and not record:
            continue
        zero = layer.kind.to_canonical(_zeros(layer))
        rows_zero = zero.flatten(1).all(dim=1).nonzero().flatten().tolist()
        cols_zero = zero.transpose(0, 1).flatten(1).all(dim=1).nonzero().flatten().tolist() if zero.dim() > 1 else []
        rows.append(LayerSparsity(
            name, list(layer.weight.shape), int(zero.sum()), zero.numel(), rows_zero, cols_zero, record.get("heads", []),
        ))
    return SparsityReport(rows)
