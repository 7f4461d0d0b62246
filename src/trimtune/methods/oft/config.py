"""OFTConfig: peft 0.21's ``OFTConfig`` fields, their defaults, and how a layer's width splits into blocks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...core.config import ConfigError, check_choice, check_fraction, check_positive, check_positive_int
from ...core.io.peft_format import check_fields, peft_target_modules, targets_from_peft
from ...core.targets import TargetSpec

INIT_TO_PEFT = {"default": True, "random": False}
INIT_FROM_PEFT = {v: k for k, v in INIT_TO_PEFT.items()}
# The peft version whose Cayley-Neumann series trimtune computes: peft warns that a file without it
# (or older) used another series.
NEUMANN_FORMAT_VERSION = "0.18.0"


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


def check_count(name: str, value) -> None:
    """An integer >= 0 (0: "the other field decides")."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")


def divisors(width: int) -> list[int]:
    return [d for d in range(1, width + 1) if width % d == 0]


@dataclass
class OFTConfig:
    """Orthogonal fine-tuning: each target's inputs are rotated by a block-diagonal orthogonal matrix.

    r / oft_block_size: the number of blocks per layer, or their size; give one, the other 0 (peft's
    default: blocks of 32). Either must divide every target's input width (in · kh · kw for a
    convolution); peft silently picks a nearby divisor, trimtune refuses and names the layer.
    use_cayley_neumann: the rotation from the truncated Neumann series of the Cayley transform
    (peft 0.21's default) with num_cayley_neumann_terms terms, else the exact Cayley transform.
    coft / eps: constrained OFT, each block kept within eps (scaled by 1/√blocks) of the identity.
    block_share: one rotation shared by all blocks of a layer. module_dropout: while training, that
    share of a layer's blocks is the identity for a forward (peft 0.21 builds this layer but never
    calls it, so its runs train as if 0; trimtune applies it). init [init_weights]: "default" (the
    identity: the model starts unchanged) or "random" (normal, std 0.1; for tests). targets,
    modules_to_save: as LoRA's. Linear and Conv2d layers.
    """

    peft_type: ClassVar[str] = "OFT"

    r: int = 0
    oft_block_size: int = 32
    module_dropout: float = 0.0
    coft: bool = False
    eps: float = 6e-5
    block_share: bool = False
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = 5
    targets: TargetSpec = None
    init: str = "default"
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_count("r", self.r)
        check_count("oft_block_size", self.oft_block_size)
        if (self.r == 0) == (self.oft_block_size == 0):
            raise ConfigError(f"give one of r (blocks per layer) and oft_block_size (their size), the other 0, since "
                              f"r × oft_block_size is each target's input width; got r={self.r} and "
                              f"oft_block_size={self.oft_block_size}")
        check_fraction("module_dropout", self.module_dropout)
        for name in ("coft", "block_share", "use_cayley_neumann"):
            check_bool(name, getattr(self, name))
        check_positive("eps", self.eps)
        check_positive_int("num_cayley_neumann_terms", self.num_cayley_neumann_terms)
        check_choice("init", self.init, INIT_TO_PEFT)
        self.modules_to_save = list(self.modules_to_save or [])

    def block_size(self, width: int, layer: str) -> int:
        """The block size on a layer whose rotated width is ``width``; refuses one that does not divide it."""
        field_name, value = ("r", self.r) if self.r else ("oft_block_size", self.oft_block_size)
        if width % value:
            raise ConfigError(f"{field_name}={value} does not divide the input width of {layer} ({width}); "
                              f"{field_name} must divide every target's input width, here one of {divisors(width)}")
        return width // value if self.r else value

    # ---- PEFT adapter files (convention: core/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        fields = {
            "r": self.r,
            "oft_block_size": self.oft_block_size,
            "module_dropout": self.module_dropout,
            "coft": self.coft,
            "eps": self.eps,
            "block_share": self.block_share,
            "use_cayley_neumann": self.use_cayley_neumann,
            "num_cayley_neumann_terms": self.num_cayley_neumann_terms,
            "target_modules": peft_target_modules(self.targets, list(layers)),
            "init_weights": INIT_TO_PEFT[self.init],
            "modules_to_save": self.modules_to_save or None,
            "bias": "none",
            "fan_in_fan_out": False,
        }
        return {**fields, "peft_version": NEUMANN_FORMAT_VERSION} if self.use_cayley_neumann else fields

    peft_fields: ClassVar[frozenset] = frozenset({
        "r", "oft_block_size", "module_dropout", "coft", "eps", "block_share", "use_cayley_neumann",
        "num_cayley_neumann_terms", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
        "init_weights", "modules_to_save", "bias", "fan_in_fan_out"})

    @classmethod
    def from_peft_dict(cls, d: dict) -> OFTConfig:
        check_fields(d, set(cls.peft_fields), cls.peft_type)
        if d.get("bias", "none") != "none":
            raise ConfigError(f"adapter_config.json sets bias={d['bias']!r}; trimtune's OFT trains no biases (bias 'none')")
        init = d.get("init_weights", True)
        if init not in INIT_FROM_PEFT:
            raise ConfigError(f"adapter_config.json sets init_weights={init!r}; an OFT file has true or false")
        return cls(
            r=d.get("r", 0), oft_block_size=d.get("oft_block_size", 32), module_dropout=d.get("module_dropout", 0.0),
            coft=bool(d.get("coft", False)), eps=d.get("eps", 6e-5), block_share=bool(d.get("block_share", False)),
            use_cayley_neumann=bool(d.get("use_cayley_neumann", True)),
            num_cayley_neumann_terms=d.get("num_cayley_neumann_terms", 5),
            targets=targets_from_peft(d.get("target_modules"), d.get("exclude_modules"), d.get("layers_to_transform"),
                                      d.get("layers_pattern")),
            init=INIT_FROM_PEFT[init], modules_to_save=list(d.get("modules_to_save") or []),
        )
