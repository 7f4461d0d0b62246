"""What the LyCORIS family (LoHa here, LoKr in ``methods/lokr``) shares: config fields, the dense
change trained in weight form with rank and module dropout, the Tucker rebuild of a conv kernel.

A LyCORIS delta is a full-size change ``ΔW`` built from small factors (a Hadamard product for LoHa,
a Kronecker product for LoKr). It is added to the weight before the layer's op (the ``weight_delta``
stage), so a step runs one matmul over the tokens, not peft's two (``W x`` and ``ΔW x``), and a pruned
layer's mask applies to the change as to the base: a sparse merge is exact.

Dropout as peft and the LyCORIS repository do it, drawing from torch's generator in peft's order so
that the same seed gives the same run: while training, one draw per forward decides whether the
adapter is skipped (``module_dropout``; peft draws it even at 0, and so do we, to keep the stream),
then ``rank_dropout`` zeroes whole output rows of ``ΔW``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ...core.config import ConfigError, check_choice, check_fraction, check_positive, check_positive_int
from ...core.delta import Delta
from ...core.io.peft_format import check_fields, peft_target_modules, targets_from_peft
from ...core.layer_kinds import ConvKind, LinearKind
from ...core.targets import TargetSpec, by_regex

# peft's init_weights values <-> trimtune's init names
INIT_FROM_PEFT = {True: "default", False: "random", "lycoris": "lycoris"}
INIT_TO_PEFT = {v: k for k, v in INIT_FROM_PEFT.items()}


@dataclass
class LycorisConfig:
    """Fields every LyCORIS method takes (peft's names in brackets where they differ).

    r: rank of the factors; alpha: scale numerator (scale = alpha / r). rank_dropout: while training,
    each output row of the change is dropped with this probability. module_dropout: while training,
    the whole adapter is skipped for a forward with this probability. use_effective_conv2d: a k×k
    convolution's change is built from a Tucker core (r, r, k, k) and two factors (FedPara's
    "Proposition 3") instead of flattened (out, in·k·k) factors. targets: regex / names / predicate /
    None (the architecture's default, as LoRA's). init [init_weights]: "default" (the model starts
    unchanged) or "random" (every factor random, for tests). modules_to_save: trained in full, one copy
    per adapter. rank_pattern / alpha_pattern: per-layer r / alpha, as LoRA's.
    """

    r: int = 8
    alpha: float = 8.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    use_effective_conv2d: bool = False
    targets: TargetSpec = None
    init: str = "default"
    modules_to_save: list[str] = field(default_factory=list)
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    inits = ("default", "random")  # a method with more initialisations (LoKr's "lycoris") widens it

    def __post_init__(self):
        check_positive_int("r", self.r)
        check_positive("alpha", self.alpha)
        check_fraction("rank_dropout", self.rank_dropout)
        check_fraction("module_dropout", self.module_dropout)
        check_bool("use_effective_conv2d", self.use_effective_conv2d)
        check_choice("init", self.init, self.inits)
        self.modules_to_save = list(self.modules_to_save or [])
        self.rank_pattern, self.alpha_pattern = dict(self.rank_pattern or {}), dict(self.alpha_pattern or {})
        for pattern, r in self.rank_pattern.items():
            check_positive_int(f"rank_pattern[{pattern!r}]", r)
        for pattern, alpha in self.alpha_pattern.items():
            check_positive(f"alpha_pattern[{pattern!r}]", alpha)

    def for_layer(self, name: str):
        """This config with r / alpha of the first rank_pattern / alpha_pattern entry matching ``name``."""
        r = next((v for k, v in self.rank_pattern.items() if by_regex(k)(name, None)), self.r)
        alpha = next((v for k, v in self.alpha_pattern.items() if by_regex(k)(name, None)), self.alpha)
        return self if (r, alpha) == (self.r, self.alpha) else dataclasses.replace(self, r=r, alpha=alpha)

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    # ---- PEFT adapter files (convention: core/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        return {
            "r": self.r,
            "alpha": int(self.alpha) if float(self.alpha).is_integer() else self.alpha,
            "rank_dropout": self.rank_dropout,
            "module_dropout": self.module_dropout,
            "use_effective_conv2d": self.use_effective_conv2d,
            "target_modules": peft_target_modules(self.targets, list(layers)),
            "init_weights": INIT_TO_PEFT[self.init],
            "modules_to_save": self.modules_to_save or None,
            "rank_pattern": self.rank_pattern,
            "alpha_pattern": self.alpha_pattern,
        }

    # the peft fields ``from_peft_dict`` reads (a subclass adds its own)
    peft_fields = frozenset({"r", "alpha", "rank_dropout", "module_dropout", "use_effective_conv2d", "target_modules",
                             "exclude_modules", "layers_to_transform", "layers_pattern", "init_weights",
                             "modules_to_save", "rank_pattern", "alpha_pattern"})

    @classmethod
    def fields_from_peft(cls, d: dict) -> dict:
        """The constructor's keywords for peft's fields in ``d`` (refusing any field it cannot honour)."""
        check_fields(d, set(cls.peft_fields), cls.peft_type)
        init = d.get("init_weights", True)
        if init not in INIT_FROM_PEFT or INIT_FROM_PEFT[init] not in cls.inits:
            allowed = [k for k, v in INIT_FROM_PEFT.items() if v in cls.inits]
            raise ConfigError(f"adapter_config.json sets init_weights={init!r}; a {cls.peft_type} file has one of {allowed}")
        return dict(
            r=d.get("r", 8),
            alpha=d.get("alpha", 8),
            rank_dropout=d.get("rank_dropout", 0.0),
            module_dropout=d.get("module_dropout", 0.0),
            use_effective_conv2d=bool(d.get("use_effective_conv2d", False)),
            targets=targets_from_peft(
                d.get("target_modules"), d.get("exclude_modules"), d.get("layers_to_transform"), d.get("layers_pattern")
            ),
            init=INIT_FROM_PEFT[init],
            modules_to_save=list(d.get("modules_to_save") or []),
            rank_pattern=d.get("rank_pattern") or {},
            alpha_pattern=d.get("alpha_pattern") or {},
        )


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


def check_target(layer, method: str) -> None:
    """Refuse, naming it, a layer a LyCORIS method does not serve: peft's Linear and Conv2d, floating point."""
    kind = layer.kind
    if not (type(kind) is LinearKind or (isinstance(kind, ConvKind) and layer.weight.dim() == 4)):
        raise ValueError(f"{method} supports Linear and Conv2d layers; {layer.module_name} is {layer.describe()} "
                         "(choose targets among the linear or 2-d convolution layers)")
    if not layer.weight.is_floating_point():
        raise ValueError(f"{method} adds its change to the weight, but {layer.module_name} has a {layer.weight.dtype} "
                         "(e.g. 4-bit) weight; apply it to a floating-point base")


def uses_tucker(layer, config: LycorisConfig) -> bool:
    """Whether this layer's change is built from a Tucker core: asked for, and a kernel larger than 1×1
    (a 1×1 convolution is a matrix product: peft flattens it, and so do we)."""
    return config.use_effective_conv2d and layer.weight.dim() == 4 and tuple(layer.weight.shape[2:]) != (1, 1)


def tucker_weight(core: torch.Tensor, out_factor: torch.Tensor, in_factor: torch.Tensor) -> torch.Tensor:
    """A conv kernel (out, in, kh, kw) from a core (r, r, kh, kw) and factors (r, out), (r, in)."""
    return torch.einsum("ijkl,ip,jq->pqkl", core, out_factor, in_factor)


def kaiming(shape: tuple[int, ...], like: torch.Tensor) -> nn.Parameter:
    """A parameter with nn.Linear's default init (Kaiming-uniform, a = sqrt 5), on ``like``'s device and dtype."""
    param = nn.Parameter(torch.empty(shape, device=like.device, dtype=like.dtype))
    nn.init.kaiming_uniform_(param, a=math.sqrt(5))
    return param


def zeros(shape: tuple[int, ...], like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape, device=like.device, dtype=like.dtype))


def rescaled(keep: torch.Tensor) -> torch.Tensor:
    """A rank-dropout mask divided by the share it keeps (all rows dropped: zeros, where peft gives NaN)."""
    return keep / keep.mean().clamp_min(1 / keep.numel())


class LycorisDelta(Delta):
    """A dense change ``ΔW`` (``dense_change``, given by the method) added to the weight before the op,
    with module and rank dropout while training."""

    def __init__(self, layer, config: LycorisConfig):
        super().__init__(layer.kind)
        self.base_shape = tuple(layer.weight.shape)
        self.r, self.scale = config.r, config.scale
        self.rank_dropout, self.module_dropout = config.rank_dropout, config.module_dropout

    def dense_change(self) -> torch.Tensor:
        """s · ΔW in the base weight's shape (no dropout)."""
        raise NotImplementedError

    def rank_dropout_mask(self, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """Keep (1) or drop (0) each output row; LoHa rescales by the kept share, LoKr when asked."""
        return (torch.rand(rows) > self.rank_dropout).to(dtype)

    def weight_delta(self):
        if not self.training:
            return self.dense_change()
        if not torch.rand(1) > self.module_dropout:  # drawn even at 0: the generator stays where peft's is
            return torch.zeros((), dtype=self.dtype, device=self.device)  # skipped for this forward
        change = self.dense_change()
        if self.rank_dropout > 0:
            keep = self.rank_dropout_mask(change.shape[0], change.dtype).to(change.device)
            change = change * keep.view(-1, *[1] * (change.dim() - 1))
        return change

    def delta_weight(self):
        return self.dense_change()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def extra_repr(self):
        dropout = f", rank_dropout={self.rank_dropout:g}, module_dropout={self.module_dropout:g}"
        return f"r={self.r}, scale={self.scale:g}{dropout if self.rank_dropout or self.module_dropout else ''}"
