"""BOFTConfig: peft 0.21's ``BOFTConfig`` fields and defaults, and each layer's block layout (peft's
rules, but refused with the field named where peft would fail deep inside or pick silently)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...core.config import ConfigError, check_choice, check_fraction, check_positive_int
from ...core.io.peft_format import check_fields, peft_target_modules, targets_from_peft
from ...core.targets import TargetSpec
from ..oft.config import INIT_FROM_PEFT, INIT_TO_PEFT, check_count, divisors


@dataclass
class BOFTConfig:
    """Butterfly orthogonal fine-tuning: each target's inputs are rotated by a product of
    boft_n_butterfly_factor block-diagonal orthogonal factors (see ``butterfly.py``), and its outputs
    scaled per unit (``boft_s``).

    boft_block_size / boft_block_num: the blocks' size or their number per factor; give one, the other
    0 (peft's default: blocks of 4). With more than one factor both must be even, and the width must
    hold block_size · 2^(factors − 1) a whole number of times. boft_dropout: while training, in one
    factor drawn at random, that share of its blocks is the identity for a forward (peft's draws).
    init [init_weights]: "default" (identity rotation, unit scale: the model starts unchanged) or
    "random" (for tests). targets, modules_to_save: as LoRA's. Linear and Conv2d layers.
    """

    peft_type: ClassVar[str] = "BOFT"

    boft_block_size: int = 4
    boft_block_num: int = 0
    boft_n_butterfly_factor: int = 1
    boft_dropout: float = 0.0
    targets: TargetSpec = None
    init: str = "default"
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_count("boft_block_size", self.boft_block_size)
        check_count("boft_block_num", self.boft_block_num)
        if (self.boft_block_size == 0) == (self.boft_block_num == 0):
            raise ConfigError(f"give one of boft_block_size and boft_block_num, the other 0, since their product is "
                              f"each target's input width; got boft_block_size={self.boft_block_size} and "
                              f"boft_block_num={self.boft_block_num}")
        check_positive_int("boft_n_butterfly_factor", self.boft_n_butterfly_factor)
        check_fraction("boft_dropout", self.boft_dropout)
        check_choice("init", self.init, INIT_TO_PEFT)
        self.modules_to_save = list(self.modules_to_save or [])

    def layout(self, width: int, layer: str) -> tuple[int, int]:
        """(blocks per factor, block size) on a layer whose rotated width is ``width``; refuses, naming
        the field, a layout peft would refuse or the butterfly cannot form."""
        field_name, value = ("boft_block_size", self.boft_block_size) if self.boft_block_size else \
            ("boft_block_num", self.boft_block_num)
        where = f"the input width of {layer} ({width})"
        if width % value:
            raise ConfigError(f"{field_name}={value} does not divide {where}; {field_name} must divide every target's "
                              f"input width, here one of {divisors(width)}")
        size = self.boft_block_size or width // value
        blocks = width // size
        span = 2 ** (self.boft_n_butterfly_factor - 1)  # the blocks the last factor's permutation spans
        if self.boft_n_butterfly_factor > 1 and (blocks % span or blocks % 2 or size % 2):
            raise ConfigError(
                f"boft_n_butterfly_factor={self.boft_n_butterfly_factor} needs even blocks, a multiple of "
                f"2^{self.boft_n_butterfly_factor - 1} = {span} of them and an even block size; {field_name}={value} "
                f"gives {blocks} blocks of {size} on {where}")
        return blocks, size

    # ---- PEFT adapter files (convention: core/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        return {
            "boft_block_size": self.boft_block_size,
            "boft_block_num": self.boft_block_num,
            "boft_n_butterfly_factor": self.boft_n_butterfly_factor,
            "boft_dropout": self.boft_dropout,
            "target_modules": peft_target_modules(self.targets, list(layers)),
            "init_weights": INIT_TO_PEFT[self.init],
            "modules_to_save": self.modules_to_save or None,
            "bias": "none",
            "fan_in_fan_out": False,
        }

    peft_fields: ClassVar[frozenset] = frozenset({
        "boft_block_size", "boft_block_num", "boft_n_butterfly_factor", "boft_dropout", "target_modules",
        "exclude_modules", "layers_to_transform", "layers_pattern", "init_weights", "modules_to_save", "bias",
        "fan_in_fan_out"})

    @classmethod
    def from_peft_dict(cls, d: dict) -> BOFTConfig:
        check_fields(d, set(cls.peft_fields), cls.peft_type)
        if d.get("bias", "none") != "none":
            raise ConfigError(f"adapter_config.json sets bias={d['bias']!r}; trimtune's BOFT trains no biases (bias 'none')")
        init = d.get("init_weights", True)
        if init not in INIT_FROM_PEFT:
            raise ConfigError(f"adapter_config.json sets init_weights={init!r}; a BOFT file has true or false")
        return cls(
            boft_block_size=d.get("boft_block_size", 4), boft_block_num=d.get("boft_block_num", 0),
            boft_n_butterfly_factor=d.get("boft_n_butterfly_factor", 1), boft_dropout=d.get("boft_dropout", 0.0),
            targets=targets_from_peft(d.get("target_modules"), d.get("exclude_modules"), d.get("layers_to_transform"),
                                      d.get("layers_pattern")),
            init=INIT_FROM_PEFT[init], modules_to_save=list(d.get("modules_to_save") or []),
        )
