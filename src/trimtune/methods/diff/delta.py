"""Diff pruning (Guo, Rush & Kim, 2021): a task is ``θ + δ`` with δ trained sparse over a frozen base.

A ``DiffDelta`` adds a dense δ to the weight and bias of one wrapped layer (``weight_delta`` /
``bias_delta``), so the wrapper computes ``(W + δ) ⊙ M``. It lives in two phases:

- **dense** (the sparsity phase): δ is a full-size parameter ``w``, optionally gated by
  hard-concrete gates ``z`` (Louizos et al., 2018), ``δ = z ⊙ w``; ``diff_penalty`` gives the
  L1 or expected-L0 loss term. A structured variant multiplies a shared group gate per matrix or
  per output row into the per-entry gates.
- **sparse** (fixed-mask fine-tuning): ``project_diffs`` keeps the globally largest ``|δ|`` at
  an exact density and stores only those entries, as flat indices (buffer) + values (parameter).
  Pruned entries no longer exist, so no gradient or optimizer state can revive them; only the
  kept values train (build the optimizer after projecting: the trainable parameters change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ...core.config import ConfigError, check_choice, check_positive
from ...core.delta import Delta
from ...core.hard_concrete import HardConcrete
from ...core.io.gather import full
from ...core.layer_kinds import LayerKind, kind_class_for
from ...core.targets import _HEAD_NAMES, TargetSpec


@dataclass
class DiffConfig:
    """density: fraction of the diff's entries (targeted weights and biases) kept by ``project_diffs``.

    penalty: "l0" (hard-concrete gates, expected-L0 loss), "l1" (``Σ|δ|``) or "none".
    penalty_weight: λ, the weight of that loss in training: ``trimtune.train`` (and so ``trimtune tune``)
    adds ``λ · diff_penalty(model, name)`` to every micro-batch's loss while the diff is dense.
    0 (the default) adds nothing: call ``diff_penalty`` yourself, or pass a ``DiffPenalty`` callback.
    group: structured L0, a gate shared by each whole tensor ("matrix") or each output row of a
    weight ("row"; a bias vector is one group), multiplied into the per-entry gates.
    beta (temperature), gamma < 0 < 1 < zeta (stretch interval) and log_alpha_init (initial gate
    logits; 5 leaves every gate open) parametrise the hard-concrete gates; the defaults follow the
    diff-pruning reference code (β = 1, stretch (-1.5, 1.5)); Louizos et al. use β = 2/3, (-0.1, 1.1).
    targets: default every linear layer except the output head; ``embeddings`` adds nn.Embedding
    layers. modules_to_save: modules trained in full and stored densely with the diff (a task head).
    A diff loaded from a file is already sparse and has no gates: its config says penalty="none".
    """

    density: float = 0.005
    penalty: str = "l0"
    penalty_weight: float = 0.0
    group: str = "none"
    beta: float = 1.0
    gamma: float = -1.5
    zeta: float = 1.5
    log_alpha_init: float = 5.0
    targets: TargetSpec = "all-linear"
    embeddings: bool = False
    modules_to_save: list[str] = field(default_factory=list)
    artifact_sha256: str | None = None  # set by load_diff: the file it came from (refuses a second load)

    def __post_init__(self):
        density_ok = isinstance(self.density, (int, float)) and not isinstance(self.density, bool)
        if not (density_ok and 0 < self.density <= 1):
            raise ConfigError(f"density must be a number in (0, 1], got {self.density!r}")
        check_choice("penalty", self.penalty, ("l0", "l1", "none"))
        check_choice("group", self.group, ("none", "matrix", "row"))
        weight_ok = isinstance(self.penalty_weight, (int, float)) and not isinstance(self.penalty_weight, bool)
        if not (weight_ok and math.isfinite(self.penalty_weight) and self.penalty_weight >= 0):
            raise ConfigError(f"penalty_weight must be a finite number >= 0 (the sparsity loss's weight), got {self.penalty_weight!r}")
        if self.penalty_weight and self.penalty == "none":
            raise ConfigError(f"penalty_weight={self.penalty_weight!r} weighs a sparsity loss, but penalty='none' has none; "
                              "choose penalty 'l0' or 'l1', or penalty_weight 0")
        if self.group != "none" and self.penalty != "l0":
            raise ConfigError(f"group={self.group!r} needs penalty='l0' (group gates are hard-concrete gates), got penalty={self.penalty!r}")
        check_positive("beta", self.beta)
        for name, ok, allowed in (("gamma", self.gamma < 0, "< 0"), ("zeta", self.zeta > 1, "> 1")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok:
                raise ConfigError(f"{name} must be a finite number {allowed} (hard-concrete stretch interval), got {value!r}")
        if isinstance(self.log_alpha_init, bool) or not isinstance(self.log_alpha_init, (int, float)) or not math.isfinite(self.log_alpha_init):
            raise ConfigError(f"log_alpha_init must be a finite number, got {self.log_alpha_init!r}")
        self.modules_to_save = list(self.modules_to_save or [])
        if self.embeddings:
            self.targets = _with_embeddings(self.targets)


def _with_embeddings(spec: TargetSpec):
    if spec != "all-linear":
        raise ConfigError(f"embeddings=True adds embeddings to the default targets 'all-linear'; got targets={spec!r} (list the embeddings in targets instead)")

    def linear_or_embedding(name, module):
        if isinstance(module, nn.Embedding):
            return True
        is_conv = isinstance(module, nn.modules.conv._ConvNd)
        return kind_class_for(module) is not None and not is_conv and name.split(".")[-1] not in _HEAD_NAMES

    return linear_or_embedding


class DiffDelta(Delta):
    def __init__(self, kind: LayerKind, weight: torch.Tensor, bias: torch.Tensor | None, config: DiffConfig):
        super().__init__(kind)
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        bases = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        self.shapes = {n: tuple(t.shape) for n, t in bases.items()}
        self.penalty = config.penalty
        self.gate = HardConcrete(config.beta, config.gamma, config.zeta) if config.penalty == "l0" else None
        self.diff = nn.ParameterDict({n: nn.Parameter(torch.zeros(t.shape, device=t.device, dtype=dtype)) for n, t in bases.items()})
        self.log_alpha = nn.ParameterDict()
        self.group_log_alpha = nn.ParameterDict()
        if self.gate is not None:
            for n, t in bases.items():
                self.log_alpha[n] = nn.Parameter(torch.full(t.shape, float(config.log_alpha_init), device=t.device, dtype=dtype))
                group_shape = self._group_shape(n, config.group)
                if group_shape is not None:
                    self.group_log_alpha[n] = nn.Parameter(torch.full(group_shape, float(config.log_alpha_init), device=t.device, dtype=dtype))
        self.values = nn.ParameterDict()  # the sparse phase: kept values, indices in buffers `index_<name>`

    def _group_shape(self, name: str, group: str) -> tuple[int, ...] | None:
        shape = self.shapes[name]
        if group == "none":
            return None
        if group == "matrix" or name == "bias":
            return (1,) * len(shape)
        out_dim = self.kind.out_dim
        return tuple(size if d == out_dim else 1 for d, size in enumerate(shape))

    @property
    def sparse(self) -> bool:
        return len(self.values) > 0

    def index(self, name: str) -> torch.Tensor:
        return getattr(self, f"index_{name}")

    # ---- the effective δ ----
    def gates(self, name: str, sample: bool) -> torch.Tensor:
        gate = self.gate.sample if sample else self.gate.deterministic
        z = gate(self.log_alpha[name])
        if name in self.group_log_alpha:
            z = z * gate(self.group_log_alpha[name])
        return z

    def dense(self, name: str, sample: bool = False) -> torch.Tensor:
        """δ for tensor ``name`` ("weight" or "bias") as a dense tensor of the base's shape."""
        if self.sparse:
            values = self.values[name]
            flat = values.new_zeros(math.prod(self.shapes[name])).scatter(0, self.index(name), values)
            return flat.view(self.shapes[name])
        if self.gate is None:
            return self.diff[name]
        return self.gates(name, sample) * self.diff[name]

    def _sampling(self) -> bool:
        # Gates are sampled only in a training step (train mode and autograd on); merging (no_grad)
        # and evaluation use the deterministic gate, so merge/unmerge add and remove the same δ.
        return self.gate is not None and self.training and torch.is_grad_enabled()

    def weight_delta(self):
        return self.dense("weight", self._sampling())

    def bias_delta(self):
        return self.dense("bias", self._sampling()) if "bias" in self.shapes else None

    def delta_weight(self):
        return self.dense("weight")

    # ---- the sparsity penalty and the projection ----
    def penalty_term(self) -> torch.Tensor:
        """L1 (Σ|w|) or expected L0 (Σ P(z≠0), times the group's P(z≠0) when grouped); 0 once sparse."""
        total = torch.zeros((), device=next(self.parameters()).device)
        if self.sparse or self.penalty == "none":
            return total
        for name in self.shapes:
            if self.penalty == "l1":
                total = total + full(self.diff[name].abs().sum())  # full: a sharded (FSDP) sum, all-reduced
                continue
            p = self.gate.prob_nonzero(self.log_alpha[name])
            if name in self.group_log_alpha:
                p = p * self.gate.prob_nonzero(self.group_log_alpha[name])
            total = total + full(p.sum())
        return total

    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    @torch.no_grad()
    def to_sparse(self, keep: dict[str, torch.Tensor], values: dict[str, torch.Tensor] | None = None) -> None:
        """Keep only flat indices ``keep[name]`` (sorted) of each tensor; δ there is kept, or set from ``values``."""
        trainable = next(iter(self.parameters())).requires_grad
        kept = {}
        for name in self.shapes:
            device = self.diff[name].device
            index = keep[name].to(device=device, dtype=torch.int64)
            kept[name] = values[name].to(device) if values is not None else self.dense(name).reshape(-1)[index]
            self.register_buffer(f"index_{name}", index)
        self.diff = nn.ParameterDict()
        self.log_alpha = nn.ParameterDict()
        self.group_log_alpha = nn.ParameterDict()
        self.values = nn.ParameterDict({n: nn.Parameter(v.clone(), requires_grad=trainable) for n, v in kept.items()})

    def kept(self) -> int:
        return sum(v.numel() for v in self.values.values()) if self.sparse else self.numel()

    sliceable = False

    def slice_(self, dim, keep):
        raise NotImplementedError(
            "a diff cannot be sliced by structured pruning yet; shrink the base before applying the diff, or merge it first"
        )

    def extra_repr(self):
        phase = f"sparse, kept={self.kept()}/{self.numel()}" if self.sparse else f"dense, penalty={self.penalty}"
        return f"{phase}, tensors={list(self.shapes)}"


def make_diff(layer, config: DiffConfig) -> DiffDelta:
    return DiffDelta(layer.kind, layer.weight, layer.bias, config)
