"""Model-level diff pruning: the sparsity loss term and the projection to an exact density.

Training a task diff is three steps::

    apply(model, DiffConfig(density=0.005, penalty="l0", penalty_weight=lam), "task")
    train(model, data)                                 # sparsity phase: loss + lam * diff_penalty(model, "task")
    project_diffs(model)                               # keep exactly 0.5 % of the entries
    # new optimizer over trainable parameters; fine-tune the kept entries only
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...core.io.gather import whole
from ...core.state import layers, state_of
from ...training.distributed import unwrap_model
from .delta import DiffConfig, DiffDelta


def diff_deltas(model: nn.Module, adapter: str) -> list[tuple[str, DiffDelta]]:
    """(layer name, delta) of diff adapter ``adapter``, in module order."""
    config = state_of(model).adapters.get(adapter)
    if not isinstance(config, DiffConfig):
        diffs = [n for n, c in state_of(model).adapters.items() if isinstance(c, DiffConfig)]
        raise KeyError(f"no diff adapter named {adapter!r}; the model's diff adapters are {diffs}")
    return [(name, layer.deltas[adapter]) for name, layer in layers(model) if adapter in layer.deltas]


def _adapter_names(model: nn.Module, adapter: str | None) -> list[str]:
    if adapter is not None:
        return [adapter]
    state = state_of(model)
    return [n for n in state.active if isinstance(state.adapters[n], DiffConfig)]


def diff_penalty(model: nn.Module, adapter: str | None = None) -> torch.Tensor:
    """The unweighted sparsity term of the active (or named) diffs: Σ|δ| for L1, the expected
    number of non-zero gates for L0. Multiply by your λ and add it to the task loss."""
    terms = [delta.penalty_term() for name in _adapter_names(model, adapter) for _, delta in diff_deltas(model, name)]
    if not terms:
        raise ValueError("the model has no active diff adapter; apply a DiffConfig first or name the adapter")
    return torch.stack(terms).sum()


@torch.no_grad()
def project_diffs(model: nn.Module, adapter: str | None = None, density: float | None = None) -> dict:
    """Keep the globally largest ``|δ|`` of diff ``adapter`` (default: the one active diff) so that
    exactly ``max(1, round(density · N))`` of its N entries remain; the rest are dropped for good.

    Ties are broken by position (earlier layer, weight before bias, lower flat index first), so the
    result is deterministic. The magnitudes are the test-time ``δ = z ⊙ w``: with diff's default
    hard-concrete constants (γ −1.5, ζ 1.5) a gate at log α ≤ 0 gives z = 0 although P(z ≠ 0) is 0.5
    at log α = 0, so such entries rank last, tied at zero (see ``core/hard_concrete.py``); when fewer
    than k entries are open, the rest of the kept entries are zeros picked by position.
    Returns ``{"kept", "total", "density"}``.

    On a model sharded with FSDP every rank calls it: each δ is gathered whole, so every rank ranks
    all N entries and keeps the same ones as one process. The kept values become plain (replicated)
    parameters; ``trimtune.train`` averages their gradients across ranks in the sparse phase."""
    names = _adapter_names(model, adapter)
    if len(names) != 1:
        raise ValueError(f"name the diff adapter to project; active diffs: {names}")
    deltas = [delta for _, delta in diff_deltas(model, names[0])]
    density = state_of(model).adapters[names[0]].density if density is None else density
    if not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}")
    if any(delta.sparse for delta in deltas):
        raise ValueError(f"diff {names[0]!r} is already projected; project a diff once, after its sparsity phase")
    parts = [(delta, name) for delta in deltas for name in delta.shapes]
    dense = [whole(delta.dense(name)) for delta, name in parts]  # sharded (FSDP): gathered, same on every rank
    magnitudes = torch.cat([d.abs().reshape(-1).float().cpu() for d in dense])
    total = magnitudes.numel()
    k = max(1, round(density * total))
    order = torch.sort(magnitudes, descending=True, stable=True).indices  # stable: ties keep position order
    keep = torch.zeros(total, dtype=torch.bool)
    keep[order[:k]] = True
    start, values = 0, iter(dense)
    for delta in deltas:
        kept, kept_values = {}, {}
        for name in delta.shapes:
            size = math.prod(delta.shapes[name])
            kept[name] = keep[start : start + size].nonzero().squeeze(1).to(delta.diff[name].device)
            kept_values[name] = next(values).reshape(-1)[kept[name]]
            start += size
        delta.to_sparse(kept, kept_values)
    return {"kept": k, "total": total, "density": k / total}


class DiffPenalty:
    """A ``train`` callback adding ``weight · diff_penalty(model)`` to every micro-batch's loss (the
    active diffs', or adapter ``adapter``'s while it is active). ``apply`` installs one on the model
    for a ``DiffConfig`` with a ``penalty_weight``, so ``trimtune.train`` runs it without being told."""

    def __init__(self, weight: float, adapter: str | None = None):
        self.weight, self.adapter = weight, adapter

    def loss_term(self, ctx) -> torch.Tensor | None:
        model = unwrap_model(ctx.model)  # the state lives on the model inside a DDP wrapper
        if self.adapter is not None and self.adapter not in state_of(model).active:
            return None
        return self.weight * diff_penalty(model, self.adapter)


def diff_optimizer(model: nn.Module, lr: float, gate_lr: float = 0.1, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, the hard-concrete gate logits with their own larger
    step (Guo et al. train log α at 0.1): their gradients are tiny, Adam rescales them."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: apply a DiffConfig (trimtune.apply) first")
    is_gate = [".log_alpha." in n or ".group_log_alpha." in n for n, _ in params]
    gates = [p for (_, p), gate in zip(params, is_gate) if gate]
    groups = [{"params": [p for (_, p), gate in zip(params, is_gate) if not gate], "lr": lr}]
    if gates:
        groups.append({"params": gates, "lr": gate_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
