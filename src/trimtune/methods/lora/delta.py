"""LoRA (Hu et al., 2021): a low-rank update ``scale · B A`` added to a frozen weight.

The forward stays factored, ``y += scale · (drop(x) A^T) B^T``, fused into one addmm for linear
layers, so training never materialises ``W + BA`` (no full-size weight copy, no dense weight
gradient). Factor shapes follow peft's so adapter files convert by renaming keys only.

``follow_mask=True`` is the exception, for LoRA on a pruned base: the change is trained in weight
form, ``(W + scale · B A) ⊙ M`` (``MaskedLoraDelta``), so pruned entries stay zero and merging into
the sparse layer gives exactly the trained model (the factored form adds BA unmasked, and a sparse
merge then drops part of it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ...core.config import ConfigError, check_choice, check_fraction, check_positive, check_positive_int
from ...core.delta import Delta
from ...core.io.peft_format import check_fields, peft_target_modules, targets_from_peft
from ...core.layer_kinds import EmbeddingKind, GPT2Conv1DKind, LayerKind
from ...core.low_rank import add_low_rank, slice_factors
from ...core.targets import TargetSpec, by_regex
from .base_inits import check_init, rewrites_base
from .context_init import CORDA_METHODS
from .gradient_init import check_lora_ga


@dataclass
class LoraConfig:
    """r: rank; alpha: scale numerator (scale = alpha / r, or alpha / sqrt(r) with ``use_rslora``).

    targets: which layers (regex on module names, list of names, predicate, or None for the
    architecture's default). init: "default" (A Kaiming-uniform, B zero, so the model starts
    unchanged), "gaussian" (A ~ N(0, 1/r), B zero), or one that starts the factors from the base
    weight, which keeps the rest (``base_inits.py``): "pissa" (top-r singular vectors), "pissa_niter_K"
    (the same by a randomised SVD, K iterations), "olora" (QR), or "lora_ga" (from the weight's mean
    gradient over ``init_batches``: a non-empty list of keyword dicts the model takes, labels included;
    ``lora_ga_direction``, ``lora_ga_scale``, ``lora_ga_gamma`` as peft's LoraGAConfig, ``gradient_init.py``),
    or "corda" (from W times its inputs' covariance over ``init_batches``; ``corda_method`` "ipm" or
    "kpm", ``context_init.py``);
    such an adapter saves as a plain LoRA of rank 2r against the original base, as peft's
    path_initial_model_for_weight_conversion does.
    bias: "none", "all" (train every bias of the model) or "lora_only" (train the biases of targeted
    layers). modules_to_save: modules trained in full, one copy per adapter (e.g. a classification head). rank_pattern / alpha_pattern: per-layer
    r / alpha, {regex on the module name's dotted suffix: value}, first match wins (peft's fields).
    target_parameters: bare parameters to adapt (peft's field), such as MoE experts stored as 3-D tensors:
    full dotted names or suffixes (``["experts.gate_up_proj", "experts.down_proj"]``); one rank-r pair per
    expert (``parameters.py``). Beside it, targets=[] adapts no layer (None: the architecture's default
    layers too, where trimtune has one). Needs dropout 0.
    follow_mask: on a pruned layer, train the change masked, (W + BA) ⊙ M, so the pruned entries stay
    zero and a sparse merge equals the trained model; costs a dense out × in product per step and
    needs dropout 0 (the default False adds BA unmasked: more capacity, but a sparse merge drops part).
    """

    peft_type: ClassVar[str] = "LORA"
    # What a hot-swap (core/hotswap.py) may change besides the tensors: the scale, which it folds into
    # lora_B (``scale_for``, ``LoraDelta.rescale``), and the initialisation, which the tensors replace.
    swap_free_fields: ClassVar[tuple[str, ...]] = ("alpha", "alpha_pattern", "use_rslora", "init")

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: TargetSpec = None
    use_rslora: bool = False
    init: str = "default"
    bias: str = "none"
    modules_to_save: list[str] = field(default_factory=list)
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    follow_mask: bool = False
    target_parameters: list[str] | None = None
    init_batches: list | None = None
    lora_ga_direction: str = "ArB2r"
    lora_ga_scale: str = "stable"
    lora_ga_gamma: float = 16.0
    corda_method: str = "ipm"

    def __post_init__(self):
        if not isinstance(self.follow_mask, bool):
            raise ConfigError(f"follow_mask must be True or False, got {self.follow_mask!r}")
        if self.follow_mask and self.dropout > 0:
            raise ConfigError(
                f"follow_mask=True trains the change as (W + BA) ⊙ M, where dropout on the adapter's input alone "
                f"does not exist; set dropout=0 (got {self.dropout})")
        check_positive_int("r", self.r)
        check_positive("alpha", self.alpha)
        check_fraction("dropout", self.dropout)
        check_init(self.init)
        if self.follow_mask and rewrites_base(self.init):
            raise ConfigError(f"init={self.init!r} rewrites the base weight, which a pruning mask would cut (the start "
                              "would change the model); use follow_mask=False or init='default'")
        check_lora_ga(self)
        check_choice("corda_method", self.corda_method, CORDA_METHODS)
        check_choice("bias", self.bias, ("none", "all", "lora_only"))
        self.modules_to_save = list(self.modules_to_save or [])
        self.rank_pattern, self.alpha_pattern = dict(self.rank_pattern or {}), dict(self.alpha_pattern or {})
        for pattern, r in self.rank_pattern.items():
            check_positive_int(f"rank_pattern[{pattern!r}]", r)
        for pattern, alpha in self.alpha_pattern.items():
            check_positive(f"alpha_pattern[{pattern!r}]", alpha)
        self._check_target_parameters()

    def _check_target_parameters(self) -> None:
        value = self.target_parameters
        if value is None:
            return
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"target_parameters must be a list of parameter names (a full dotted name or its suffix, "
                              f"e.g. ['experts.gate_up_proj', 'experts.down_proj']), got {value!r}")
        self.target_parameters = list(value)
        if value and self.dropout > 0:  # the module, not LoRA, sees the input: there is nothing to drop (peft refuses too)
            raise ConfigError(f"dropout must be 0 with target_parameters (LoRA on a bare parameter has no input of its own "
                              f"to drop), got {self.dropout}")
        if value and self.follow_mask:
            raise ConfigError("follow_mask=True is not available with target_parameters: a bare parameter carries no pruning mask")
        if value and rewrites_base(self.init):  # the residual and the plain-LoRA save are written for layers
            raise ConfigError(f"init={self.init!r} is not available with target_parameters: it rewrites a layer's base weight, "
                              "and bare parameters are adapted from the default init only (choose init='default' or 'gaussian')")

    def for_layer(self, name: str) -> LoraConfig:
        """This config with r / alpha of the first rank_pattern / alpha_pattern entry matching ``name``."""
        r = next((v for k, v in self.rank_pattern.items() if by_regex(k)(name, None)), self.r)
        alpha = next((v for k, v in self.alpha_pattern.items() if by_regex(k)(name, None)), self.alpha)
        return self if (r, alpha) == (self.r, self.alpha) else dataclasses.replace(self, r=r, alpha=alpha)

    # ---- PEFT adapter files (convention: trimtune/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        return {
            "r": self.r,
            "lora_alpha": int(self.alpha) if float(self.alpha).is_integer() else self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": peft_target_modules(self.targets, list(layers)),
            "use_rslora": self.use_rslora,
            "init_lora_weights": "gaussian" if self.init == "gaussian" else True,
            "bias": self.bias,
            "modules_to_save": self.modules_to_save or None,
            "rank_pattern": self.rank_pattern,
            "alpha_pattern": self.alpha_pattern,
            # peft transposes for GPT-2's Conv1D only when told (it warns and sets it itself otherwise)
            "fan_in_fan_out": any(isinstance(layer.kind, GPT2Conv1DKind) for layer in layers.values()),
            **({"trimtune_follow_mask": True} if self.follow_mask else {}),  # peft ignores it, with a warning
            **({"target_parameters": list(self.target_parameters)} if self.target_parameters else {}),
        }

    @classmethod
    def from_peft_dict(cls, d: dict) -> LoraConfig:
        init = d.get("init_lora_weights", True)
        if init not in (True, False, "gaussian"):
            # PiSSA, OLoRA, LoftQ, ... rewrite the base weights: this adapter needs that rewritten base.
            raise ConfigError(f"init_lora_weights={init!r} changes the base model; trimtune loads True, False or 'gaussian' "
                              "(save it from peft with path_initial_model_for_weight_conversion to get a plain LoRA)")
        # fan_in_fan_out only says how peft stores GPT-2 Conv1D weights; trimtune's layer kinds know the layout.
        layout_only = {"fan_in_fan_out", "init_lora_weights", "megatron_core", "qalora_group_size", "runtime_config"}
        fields = {"r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "bias", "modules_to_save", "rank_pattern", "alpha_pattern"}
        fields |= {"exclude_modules", "layers_to_transform", "layers_pattern", "trimtune_follow_mask", "target_parameters"}
        check_fields(d, fields | layout_only, cls.peft_type)
        return cls(
            r=d.get("r", 8),
            alpha=d.get("lora_alpha", 8),
            dropout=d.get("lora_dropout", 0.0),
            targets=targets_from_peft(
                d.get("target_modules"), d.get("exclude_modules"), d.get("layers_to_transform"), d.get("layers_pattern")
            ),
            use_rslora=bool(d.get("use_rslora", False)),
            init="gaussian" if init == "gaussian" else "default",
            bias=d.get("bias", "none"),
            modules_to_save=list(d.get("modules_to_save") or []),
            rank_pattern=d.get("rank_pattern") or {},
            alpha_pattern=d.get("alpha_pattern") or {},
            follow_mask=bool(d.get("trimtune_follow_mask", False)),
            target_parameters=d.get("target_parameters") or None,
        )

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def scale_for(self, name: str) -> float:
        """The scale of the layer at module name ``name`` (rank_pattern / alpha_pattern applied)."""
        return self.for_layer(name).scale


class LoraDelta(Delta):
    def __init__(self, kind: LayerKind, weight: torch.Tensor, r: int, scale: float, dropout: float = 0.0, init: str = "default"):
        super().__init__(kind)
        a_shape, b_shape = kind.factor_shapes(weight, r)
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        self.r = r
        self.scale = scale
        self.lora_A = nn.Parameter(torch.empty(a_shape, device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(b_shape, device=weight.device, dtype=dtype))
        self.dropout = dropout
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "default") -> None:
        if isinstance(self.kind, EmbeddingKind):  # peft's choice for embeddings: A zero, B normal
            nn.init.zeros_(self.lora_A)
            nn.init.normal_(self.lora_B)
            return
        if init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / self.r)
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def add_output(self, y, x):
        dropout = self.dropout if self.training else 0.0
        if x.is_floating_point() and x.dtype != self.lora_A.dtype:  # e.g. fp32 factors on a bf16 base
            x = nn.functional.dropout(x.to(self.lora_A.dtype), dropout, self.training)
            h = self.kind.project_in(x, self.lora_A)
            return self.kind.add_project_out(y, h.to(y.dtype), self.lora_B.to(y.dtype), self.scale)
        return add_low_rank(self.kind, y, x, self.lora_A, self.lora_B, self.scale, dropout)

    def peft_key(self, key):
        if isinstance(self.kind, EmbeddingKind):  # peft: bare parameters lora_embedding_A / _B
            return key.replace("lora_", "lora_embedding_")
        return f"{key}.weight"  # peft: lora_A / lora_B are nn.Linear (or conv) modules

    def delta_weight(self):
        return self.kind.factors_to_weight(self.lora_A, self.lora_B) * self.scale

    def slice_(self, dim, keep):
        slice_factors(self, dim, keep)

    @torch.no_grad()
    def rescale(self, factor):
        self.lora_B.mul_(factor)  # scale·B·A with B·factor: the scale itself (a float) stays what a compiled graph saw

    def extra_repr(self):
        return f"r={self.r}, scale={self.scale:g}, dropout={self.dropout:g}"


class MaskedLoraDelta(LoraDelta):
    """LoRA in weight form, ``W + scale · B A`` before the layer's mask is applied (``follow_mask``)."""
    add_output = Delta.add_output  # not factored: the change goes through the masked weight instead

    def __init__(self, kind: LayerKind, weight: torch.Tensor, *args, **kwargs):
        super().__init__(kind, weight, *args, **kwargs)
        self.base_dtype = weight.dtype  # the sum must stay in the base's dtype (e.g. fp32 factors, bf16 base)

    def weight_delta(self):
        return self.delta_weight().to(self.base_dtype)
