"""What a shrink removed: per layer shape before -> after and the kept indices, and the totals."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class LayerChange:
    module: str
    shape_before: list[int]
    shape_after: list[int]
    kept: dict[str, list[int]] = field(default_factory=dict)  # dim ("out"/"in"/"channel") -> kept indices


@dataclass
class ShrinkReport:
    layers: list[LayerChange]
    history: list[dict]
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None
    bytes_before: int | None = None
    bytes_after: int | None = None
    latency_ms_before: float | None = None
    latency_ms_after: float | None = None
    widths: dict | None = None  # per-layer heads/ffn of a transformer

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def totals(self) -> list[tuple[str, object, object]]:
        rows = [("params", self.params_before, self.params_after)]
        for label, before, after in (
            ("MACs", self.macs_before, self.macs_after),
            ("file bytes", self.bytes_before, self.bytes_after),
            ("latency ms", self.latency_ms_before, self.latency_ms_after),
        ):
            if before is not None:
                rows.append((label, before, after))
        return rows

    def table(self, max_indices: int = 12) -> str:
        lines = [f"{'layer':<48} {'before':>16} -> {'after':<16} kept"]
        for change in self.layers:
            kept = "; ".join(f"{dim}: {_short(idx, max_indices)}" for dim, idx in change.kept.items())
            lines.append(f"{change.module:<48} {str(tuple(change.shape_before)):>16} -> {str(tuple(change.shape_after)):<16} {kept}")
        lines.append("")
        for label, before, after in self.totals():
            ratio = f"  ({after / before:.3f}x)" if before else ""
            lines.append(f"{label:<12} {_fmt(before):>14} -> {_fmt(after):<14}{ratio}")
        return "\n".join(lines)


def _short(indices: list[int], limit: int) -> str:
    shown = ",".join(map(str, indices[:limit]))
    return f"[{shown}{',…' if len(indices) > limit else ''}] ({len(indices)})"


def _fmt(value) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
