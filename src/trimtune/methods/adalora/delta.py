"""AdaLoRA (Zhang et al., 2023): an SVD-form update ``P diag(λ) Q`` whose rank budget moves between layers.

Each targeted layer gets ``lora_A = Q`` (r x in), ``lora_E = λ`` (r x 1), ``lora_B = P`` (out x r)
(peft's names and shapes) and adds ``scale / ranknum · x (Q ⊙ λ)^T P^T`` to its output, factored
like LoRA. ``ranknum`` is the layer's initial rank, fixed, so masking λ entries does not rescale
the rest. Training adds an orthogonality penalty on P and Q and, every step, re-scores each
singular triplet and masks the least important λ to follow a cubic budget schedule; that part
lives in ``adalora_budget.py`` and runs automatically inside ``trimtune.train``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from ...core.config import ConfigError, check_fraction, check_positive, check_positive_int
from ...core.delta import Delta
from ...core.io.gather import whole
from ...core.io.peft_format import check_fields, peft_target_modules, targets_from_peft
from ...core.layer_kinds import GPT2Conv1DKind, LayerKind, LinearKind
from ...core.low_rank import slice_factors
from ...core.targets import TargetSpec


@dataclass
class AdaLoraConfig:
    """init_r: every layer's starting rank; target_r: the average rank left at the end.

    total_step: training steps (None: taken from ``trimtune.train``'s step count). The budget stays
    at ``init_r`` per layer for ``tinit`` steps, falls cubically to ``target_r`` per layer, and the
    ranks are frozen for the last ``tfinal`` steps; masks are recomputed every ``deltaT`` steps.
    beta1/beta2: EMA factors of the sensitivity and its uncertainty. orth_reg_weight: weight of
    the orthogonality penalty added to the training loss. alpha: scale numerator (scale = alpha /
    init_r). rank_pattern: per-layer kept triplets (set by training; read from peft files).
    """

    peft_type: ClassVar[str] = "ADALORA"

    init_r: int = 12
    target_r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: TargetSpec = None
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = None
    rank_pattern: dict[str, list[bool]] | None = None
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_positive_int("init_r", self.init_r)
        check_positive_int("target_r", self.target_r)
        if self.target_r > self.init_r:
            raise ConfigError(f"target_r ({self.target_r}) must be <= init_r ({self.init_r}): AdaLoRA only removes rank")
        check_positive("alpha", self.alpha)
        check_fraction("dropout", self.dropout)
        check_positive_int("tinit", self.tinit, minimum=0)
        check_positive_int("tfinal", self.tfinal, minimum=0)
        check_positive_int("deltaT", self.deltaT)
        check_fraction("beta1", self.beta1)
        check_fraction("beta2", self.beta2)
        if not isinstance(self.orth_reg_weight, (int, float)) or self.orth_reg_weight < 0:
            raise ConfigError(f"orth_reg_weight must be a number >= 0, got {self.orth_reg_weight!r}")
        self.modules_to_save = list(self.modules_to_save or [])
        if self.total_step is not None:
            self.check_schedule(self.total_step)

    def check_schedule(self, total_step) -> None:
        check_positive_int("total_step", total_step)
        if self.tinit >= total_step - self.tfinal:
            raise ConfigError(
                f"the budget schedule is empty: tinit ({self.tinit}) must be < total_step - tfinal "
                f"({total_step} - {self.tfinal}); the rank reduction runs between tinit and total_step - tfinal"
            )

    @property
    def scale(self) -> float:
        return float(self.alpha)

    # ---- PEFT adapter files (convention: trimtune/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        c = self
        # peft refuses a file without a usable schedule; an untrained adapter gets the shortest valid one.
        total_step = c.total_step or c.tinit + c.tfinal + 1
        return {
            "init_r": c.init_r, "target_r": c.target_r,
            "lora_alpha": int(c.alpha) if float(c.alpha).is_integer() else c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": peft_target_modules(c.targets, list(layers)),
            "tinit": c.tinit, "tfinal": c.tfinal, "deltaT": c.deltaT, "beta1": c.beta1, "beta2": c.beta2,
            "orth_reg_weight": c.orth_reg_weight, "total_step": total_step,
            # peft's keys name the λ tensor of each layer; the tensors in the file keep only these ranks.
            "rank_pattern": None if c.rank_pattern is None else {f"{k}.lora_E": v for k, v in c.rank_pattern.items()},
            "modules_to_save": c.modules_to_save or None,
            "fan_in_fan_out": any(isinstance(layer.kind, GPT2Conv1DKind) for layer in layers.values()),
            "init_lora_weights": True,
        }

    @classmethod
    def from_peft_dict(cls, d: dict) -> AdaLoraConfig:
        fields = {"init_r", "target_r", "lora_alpha", "lora_dropout", "target_modules", "tinit", "tfinal", "deltaT",
                  "beta1", "beta2", "orth_reg_weight", "total_step", "rank_pattern", "modules_to_save"}
        # r is LoraConfig's field that AdaLoRA ignores; the rest only describe peft's own layout.
        ignored = {"r", "fan_in_fan_out", "init_lora_weights", "bias", "alpha_pattern", "megatron_core", "runtime_config", "qalora_group_size"}
        check_fields(d, fields | ignored, cls.peft_type)
        pattern = d.get("rank_pattern")
        return cls(
            init_r=d.get("init_r", 12), target_r=d.get("target_r", 8), alpha=d.get("lora_alpha", 8),
            dropout=d.get("lora_dropout", 0.0), targets=targets_from_peft(d.get("target_modules")),
            tinit=d.get("tinit", 0), tfinal=d.get("tfinal", 0), deltaT=d.get("deltaT", 1),
            beta1=d.get("beta1", 0.85), beta2=d.get("beta2", 0.85), orth_reg_weight=d.get("orth_reg_weight", 0.5),
            total_step=d.get("total_step"),
            rank_pattern=None if pattern is None else {_layer_of(k): [bool(b) for b in v] for k, v in pattern.items()},
            modules_to_save=list(d.get("modules_to_save") or []),
        )


def _layer_of(rank_pattern_key: str) -> str:
    """peft's rank_pattern key (``<layer>.lora_E``, maybe with the adapter name) -> the layer's name."""
    return rank_pattern_key.split(".lora_E")[0]


class AdaLoraDelta(Delta):
    def __init__(self, kind: LayerKind, weight: torch.Tensor, r: int, ranknum: int, scale: float, dropout: float = 0.0):
        super().__init__(kind)
        a_shape, b_shape = kind.factor_shapes(weight, r)
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        factory = {"device": weight.device, "dtype": dtype}
        # peft's init: λ = 0 (the model starts unchanged), P and Q small random.
        self.lora_A = nn.Parameter(torch.randn(a_shape, **factory) * 0.02)
        self.lora_E = nn.Parameter(torch.zeros(r, 1, **factory))
        self.lora_B = nn.Parameter(torch.randn(b_shape, **factory) * 0.02)
        self.ranknum = float(ranknum)
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.rank_mask: torch.Tensor | None = None  # kept triplets after the last reallocation
        self.sensitivity: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per factor: EMA, uncertainty

    def factors(self) -> dict[str, nn.Parameter]:
        return {"lora_A": self.lora_A, "lora_E": self.lora_E, "lora_B": self.lora_B}

    def add_output(self, y, x):
        if self.lora_E.shape[0] == 0:  # every triplet of this layer was pruned away
            return y
        if self.dropout is not None:
            x = self.dropout(x)
        a = self.lora_A * self.lora_E
        h = self.kind.project_in(x.to(a.dtype), a)
        return self.kind.add_project_out(y, h.to(y.dtype), self.lora_B.to(y.dtype), self.scale / (self.ranknum + 1e-5))

    def delta_weight(self):
        return self.kind.factors_to_weight(self.lora_A * self.lora_E, self.lora_B) * (self.scale / (self.ranknum + 1e-5))

    def rank(self) -> int:
        return int(self.lora_E.shape[0] if self.rank_mask is None else self.rank_mask.sum())

    def file_state(self):
        """peft's file keeps only the unmasked triplets (rows of Q and λ, columns of P)."""
        state = self.state_dict(keep_vars=True)
        if self.rank_mask is None or bool(self.rank_mask.all()):
            return state
        keep = self.rank_mask.nonzero().view(-1).to(self.lora_E.device)
        a, e, b = (whole(t) for t in (self.lora_A, self.lora_E, self.lora_B))  # sharded (FSDP): gathered first
        return {**state, "lora_A": a[keep], "lora_E": e[keep], "lora_B": b[:, keep]}

    @torch.no_grad()
    def apply_rank_mask(self, keep: torch.Tensor) -> None:
        self.rank_mask = keep.view(-1).to(torch.bool)
        drop = ~self.rank_mask.view(-1, 1).to(self.lora_E.device)
        if isinstance(self.lora_E, DTensor):  # sharded (FSDP): every rank holds the whole mask, fills its rows
            drop = distribute_tensor(drop, self.lora_E.device_mesh, self.lora_E.placements)
        self.lora_E.masked_fill_(drop, 0.0)

    def slice_(self, dim, keep):
        slice_factors(self, dim, keep)
        self.sensitivity = {}  # the statistics were for the old shapes

    def extra_repr(self):
        return f"r={self.lora_E.shape[0]}, rank={self.rank()}, scale={self.scale:g}/{self.ranknum:g}"


def make_adalora(layer, config: AdaLoraConfig) -> AdaLoraDelta:
    if not isinstance(layer.kind, (LinearKind, GPT2Conv1DKind)):
        raise ValueError(
            f"AdaLoRA supports Linear and GPT-2 Conv1D layers; {layer.module_name} is {layer.describe()}"
        )
    pattern = (config.rank_pattern or {}).get(layer.module_name)
    r = config.init_r if pattern is None else int(sum(pattern))
    delta = AdaLoraDelta(layer.kind, layer.weight, r, config.init_r, config.scale, config.dropout)
    return delta
