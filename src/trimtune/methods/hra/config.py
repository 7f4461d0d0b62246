"""HRAConfig and its peft ``adapter_config.json`` form (peft's ``HRAConfig``, peft_type "HRA")."""

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
class HRAConfig:
    """r: number of Householder reflections per layer (at most the layer's input width; even for the
    default init). apply_gs [apply_GS]: orthonormalise the r vectors first (Gram-Schmidt), which makes
    the product one reflection across their span, ``I - 2 Q Qᵀ``. targets: regex / names / predicate /
    None (the architecture's default, as LoRA's). init [init_weights]: "default" (the vectors come in
    equal pairs, each pair's reflections cancel, so the model starts unchanged; an odd r cannot pair
    and starts random, as in peft, with a warning; with apply_gs a pair spans one direction, so the
    start is a reflection, not the identity, in peft too) or "random". bias: "none" or "all".
    modules_to_save: modules trained in full, one copy per adapter (e.g. a classification head).
    """

    peft_type: ClassVar[str] = "HRA"

    r: int = 8
    apply_gs: bool = False
    targets: TargetSpec = None
    init: str = "default"
    bias: str = "none"
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_positive_int("r", self.r)
        if not isinstance(self.apply_gs, bool):
            raise ConfigError(f"apply_gs must be True or False, got {self.apply_gs!r}")
        check_choice("init", self.init, tuple(INIT_TO_PEFT))
        check_choice("bias", self.bias, ("none", "all"))
        self.modules_to_save = list(self.modules_to_save or [])

    # ---- PEFT adapter files (convention: core/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        return {
            "r": self.r,
            "apply_GS": self.apply_gs,
            "target_modules": peft_target_modules(self.targets, list(layers)),
            "init_weights": INIT_TO_PEFT[self.init],
            "bias": self.bias,
            "modules_to_save": self.modules_to_save or None,
        }

    @classmethod
    def from_peft_dict(cls, d: dict) -> HRAConfig:
        fields = {"r", "apply_GS", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
                  "init_weights", "bias", "modules_to_save"}
        check_fields(d, fields, cls.peft_type)
        init = d.get("init_weights", True)
        if init not in INIT_FROM_PEFT:
            raise ConfigError(f"adapter_config.json sets init_weights={init!r}; an HRA file has True or False")
        return cls(
            r=d.get("r", 8),
            apply_gs=bool(d.get("apply_GS", False)),
            targets=targets_from_peft(
                d.get("target_modules"), d.get("exclude_modules"), d.get("layers_to_transform"), d.get("layers_pattern")
            ),
            init=INIT_FROM_PEFT[init],
            bias=d.get("bias", "none"),
            modules_to_save=list(d.get("modules_to_save") or []),
        )
