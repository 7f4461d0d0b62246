"""ShiraConfig and its peft ``adapter_config.json`` form (peft's ``ShiraConfig``, peft_type "SHIRA")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...core.config import ConfigError, check_choice, check_positive_int
from ...core.io.peft_format import check_fields, peft_target_modules, targets_from_peft
from ...core.targets import TargetSpec

# peft's init_weights values <-> trimtune's init names
INIT_FROM_PEFT = {True: "default", False: "random"}
INIT_TO_PEFT = {v: k for k, v in INIT_FROM_PEFT.items()}


@dataclass
class ShiraConfig:
    """r: sets the number of trained entries per layer, r · (out + in), as many as LoRA of rank r trains
    (the change itself is sparse, not of rank r; at most out · in entries). mask_type: "random" (peft's
    only built-in mask: entries drawn by ``torch.randperm`` from a generator seeded with random_seed, the
    same draw for every layer of a shape; None: the generator's default seed, as in peft). targets:
    regex / names / predicate / None (the architecture's default, as LoRA's). init [init_weights]:
    "default" (values zero: the model starts unchanged) or "random" (standard normal, for tests).
    modules_to_save: modules trained in full, one copy per adapter.
    """

    peft_type: ClassVar[str] = "SHIRA"

    r: int = 32
    mask_type: str = "random"
    random_seed: int | None = None
    targets: TargetSpec = None
    init: str = "default"
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_positive_int("r", self.r)
        check_choice("mask_type", self.mask_type, ("random",))
        if self.random_seed is not None and (not isinstance(self.random_seed, int) or isinstance(self.random_seed, bool)):
            raise ConfigError(f"random_seed must be an integer seed or None, got {self.random_seed!r}")
        check_choice("init", self.init, tuple(INIT_TO_PEFT))
        self.modules_to_save = list(self.modules_to_save or [])

    # ---- PEFT adapter files (convention: core/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        return {
            "r": self.r,
            "mask_type": self.mask_type,
            "random_seed": self.random_seed,
            "target_modules": peft_target_modules(self.targets, list(layers)),
            "init_weights": INIT_TO_PEFT[self.init],
            "modules_to_save": self.modules_to_save or None,
            "fan_in_fan_out": False,
        }

    @classmethod
    def from_peft_dict(cls, d: dict) -> ShiraConfig:
        # fan_in_fan_out: peft's SHiRA serves nn.Linear only and sets it to False there.
        fields = {"r", "mask_type", "random_seed", "target_modules", "exclude_modules", "layers_to_transform",
                  "layers_pattern", "init_weights", "modules_to_save", "fan_in_fan_out"}
        check_fields(d, fields, cls.peft_type)
        init = d.get("init_weights", True)
        if init not in INIT_FROM_PEFT:
            raise ConfigError(f"adapter_config.json sets init_weights={init!r}; a SHIRA file has True or False")
        return cls(
            r=d.get("r", 32),
            mask_type=d.get("mask_type", "random"),
            random_seed=d.get("random_seed"),
            targets=targets_from_peft(
                d.get("target_modules"), d.get("exclude_modules"), d.get("layers_to_transform"), d.get("layers_pattern")
            ),
            init=INIT_FROM_PEFT[init],
            modules_to_save=list(d.get("modules_to_save") or []),
        )
