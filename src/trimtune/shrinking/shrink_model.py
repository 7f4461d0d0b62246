"""``shrink``: choose units per coupled group and remove them physically, with a report.

For a supported Hugging Face transformer (BERT, Llama/GQA, GPT-2) the groups are attention heads and
FFN units per layer; for any other model they are the channel groups found by tracing it with
``example_inputs``. ``from_masks=True`` removes exactly the units a structured pruning step zeroed
in the layers' masks; otherwise each group loses ``ratio`` of its units by group magnitude.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.targets import to_predicate
from . import transformer_groups as hf
from .apply import apply_removals, removals_for
from .files import record
from .graph import Group, channel_groups
from .measure import count_macs, count_parameters, file_bytes, latency_ms
from .plan import choose_pruned, group_importance, pruned_from_masks
from .shrink_report import LayerChange, ShrinkReport


def find_groups(model, example_inputs=None, structures=("heads", "ffn"), gqa_mode: str = "kv") -> list[Group]:
    if hf.supports(model):
        groups = []
        if "heads" in structures:
            groups += hf.head_groups(model, gqa_mode)
        if "ffn" in structures:
            groups += hf.ffn_groups(model)
        return groups
    if example_inputs is None:
        raise ValueError(
            f"{type(model).__name__} is not a transformer trimtune knows; pass example_inputs=(tensor, ...) "
            "so its channel dependencies can be traced"
        )
    return channel_groups(model, tuple(example_inputs))


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {n: list(m.weight.shape) for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}


def shrink(
    model: nn.Module,
    ratio: float = 0.5,
    *,
    example_inputs=None,
    structures=("heads", "ffn"),
    from_masks: bool = False,
    round_to: int = 1,
    protected=None,
    gqa_mode: str = "kv",
    measure: bool = True,
    measure_latency: bool = False,
) -> ShrinkReport:
    """Physically remove structures in place and report what changed.

    ratio: fraction of each group's units to remove (a group is never emptied; the kept count is a
    multiple of ``round_to``). protected: a target spec (names, regex, predicate) of layers never
    touched. example_inputs: a tuple of tensors (or a dict of keyword tensors for HF models), needed
    to trace plain models, and used to count MACs and time the model. measure=False skips the
    before/after figures (params only), e.g. when timing the shrink itself."""
    groups = find_groups(model, example_inputs, structures, gqa_mode)
    is_protected = to_predicate(protected, model) if protected is not None else (lambda name, module: False)
    pruned = {}
    for g, group in enumerate(groups):
        if group.blocked or any(is_protected(m.module, model.get_submodule(m.module)) for m in group.members):
            continue
        pruned[g] = pruned_from_masks(model, group) if from_masks else choose_pruned(group_importance(model, group), ratio, round_to)
        if from_masks and len(pruned[g]) >= group.size:
            raise ValueError(f"the masks of {group.name} prune all {group.size} units; a group cannot be emptied")
    if not pruned and groups:
        reasons = "; ".join(f"{g.name} ({g.blocked})" for g in groups if g.blocked) or "every group is protected"
        raise ValueError(f"nothing can be shrunk: {reasons}")
    if from_masks and not any(len(p) for p in pruned.values()):
        raise ValueError(
            "no structure is entirely masked: shrink removes whole rows/channels/heads only; unstructured or "
            "N:M masks save nothing here (prune with a structured granularity first)"
        )
    before = _measure(model, example_inputs, measure, measure_latency)
    shapes_before = _shapes(model)
    history = apply_removals(model, removals_for(groups, pruned))
    record(model, history)  # before after_shrink edits the config: the first shrink keeps the original
    widths = hf.after_shrink(model) if hf.supports(model) else None
    after = _measure(model, example_inputs, measure, measure_latency)
    return ShrinkReport(
        layers=_changes(history, shapes_before, _shapes(model)),
        history=history,
        widths=widths,
        **{f"{k}_before": v for k, v in before.items()},
        **{f"{k}_after": v for k, v in after.items()},
    )


def _measure(model, example_inputs, full, with_latency) -> dict:
    figures = {"params": count_parameters(model), "bytes": None, "macs": None, "latency_ms": None}
    if full:
        figures["bytes"] = file_bytes(model)
    if full and example_inputs is not None:
        figures["macs"] = count_macs(model, example_inputs)
        if with_latency:
            figures["latency_ms"] = latency_ms(model, example_inputs)
    return figures


def _changes(history, shapes_before, shapes_after) -> list[LayerChange]:
    changes: dict[str, LayerChange] = {}
    for step in history:
        name = step["module"]
        change = changes.setdefault(name, LayerChange(name, shapes_before.get(name, []), shapes_after.get(name, [])))
        change.kept[step["dim"]] = step["keep"]
    return list(changes.values())
