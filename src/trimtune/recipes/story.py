"""What a pruning run records so its report can tell the story: the model's accuracy just before
pruning began (dense), just after the schedule reached its final sparsity (pruned), the measured
sparsity after every step (the schedule's ramp), and the size of the model dense vs pruned.

Written to ``prune_story.json``; the report reads it with ``summary.json`` (before / after / teacher)
and ``metrics.json`` (eval accuracy over steps).
"""

from __future__ import annotations

import copy

from torch import nn

import trimtune as tt


class PruneStory:
    """A ``train`` callback placed after the ``PruningCallback`` (it sees each step's pruning done).
    ``evaluate(model) -> metrics`` is the run's evaluation (None without eval data)."""

    def __init__(self, schedule: tt.PruneSchedule, evaluate):
        self.schedule, self.evaluate = schedule, evaluate
        self.record: dict = {"begin": schedule.begin, "end": schedule.end, "final": schedule.final, "sparsity_trace": []}

    def on_train_start(self, ctx) -> None:
        self.record["sparsity_trace"].append([ctx.step, tt.sparsity(ctx.model)])
        self._maybe_pruned(ctx)

    def on_step_end(self, ctx, step: int, loss: float) -> None:
        self.record["sparsity_trace"].append([step, tt.sparsity(ctx.model)])
        # the last step before the schedule's first prune: what pruning starts from
        if step == self.schedule.begin - 1 and "dense" not in self.record:
            self.record["dense"] = {"step": step, **(self.evaluate(ctx.model) or {})}
        self._maybe_pruned(ctx)

    def _maybe_pruned(self, ctx) -> None:
        # at the schedule's end the final sparsity is in place (as near as whole units allow)
        if "pruned" not in self.record and ctx.step >= self.schedule.end:
            self.record["pruned"] = {"step": ctx.step, **(self.evaluate(ctx.model) or {})}


def size_figures(model: nn.Module, example_inputs, saved: dict) -> dict:
    """Params, file bytes, MACs and latency dense vs pruned. Structured masks (whole units) are removed
    for real on a copy (``shrink --from-masks``), so MACs and latency are measured, not estimated;
    element and N:M masks remove no unit: there the gain is the sparse file and the nonzero count."""
    total = sum(p.numel() for p in model.parameters())
    figures = {"params_total": total, "params_nonzero": total - _masked_zeros(model),
               "file_bytes_dense": saved.get("dense_bytes"), "file_bytes_sparse": saved.get("sparse_bytes")}
    try:
        report = tt.shrink(copy.deepcopy(model), 0.0, example_inputs=example_inputs, from_masks=True, measure_latency=True)
    except Exception as err:  # noqa: BLE001 - a model shrink cannot trace still gets its other figures
        figures["shrink_error"] = f"{type(err).__name__}: {err}"
        return figures
    figures["shrunk"] = {key: getattr(report, key) for key in (
        "params_before", "params_after", "macs_before", "macs_after", "bytes_before", "bytes_after",
        "latency_ms_before", "latency_ms_after")}
    return figures


def _masked_zeros(model: nn.Module) -> int:
    masked = (m for m in model.modules() if isinstance(m, tt.TunedLayer) and m.weight_mask is not None)
    return sum(int((layer.weight_mask == 0).sum()) for layer in masked)
