"""HiraConfig and its peft ``adapter_config.json`` form (peft's ``HiraConfig``, peft_type "HIRA")."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

from ...core.config import ConfigError, check_choice, check_fraction, check_positive_int
from ...core.io.peft_format import check_fields, peft_target_modules, targets_from_peft
from ...core.layer_kinds import GPT2Conv1DKind
from ...core.targets import TargetSpec

# peft's init_weights values <-> trimtune's init names
INIT_FROM_PEFT = {True: "default", "gaussian": "gaussian", False: "random"}
INIT_TO_PEFT = {v: k for k, v in INIT_FROM_PEFT.items()}


@dataclass
class HiraConfig:
    """r: rank of the product B A (the change W ⊙ (B A) itself may have a much higher rank; peft's
    default 32). dropout [hira_dropout]: on the adapter's input. targets: regex / names / predicate /
    None (the architecture's default, as LoRA's). init [init_weights]: "default" (A Kaiming-uniform,
    B zero: the model starts unchanged), "gaussian" (A normal with std 1/r, B zero) or "random" (A and B
    standard normal, for tests). modules_to_save: modules trained in full, one copy per adapter.

    No rank_pattern: peft 0.21.2's HiRA ignores its own (every new layer gets ``r``), so a per-layer r
    would make files peft cannot load; a peft file's rank_pattern is ignored as peft ignores it.
    """

    peft_type: ClassVar[str] = "HIRA"

    r: int = 32
    dropout: float = 0.0
    targets: TargetSpec = None
    init: str = "default"
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_positive_int("r", self.r)
        check_fraction("dropout", self.dropout)
        check_choice("init", self.init, tuple(INIT_TO_PEFT))
        self.modules_to_save = list(self.modules_to_save or [])

    # ---- PEFT adapter files (convention: core/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        return {
            "r": self.r,
            "hira_dropout": self.dropout,
            "target_modules": peft_target_modules(self.targets, list(layers)),
            "init_weights": INIT_TO_PEFT[self.init],
            "modules_to_save": self.modules_to_save or None,
            "fan_in_fan_out": any(isinstance(layer.kind, GPT2Conv1DKind) for layer in layers.values()),
        }

    @classmethod
    def from_peft_dict(cls, d: dict) -> HiraConfig:
        # fan_in_fan_out is GPT-2 Conv1D's storage layout, which trimtune's layer kinds know.
        fields = {"r", "hira_dropout", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
                  "init_weights", "modules_to_save", "rank_pattern", "fan_in_fan_out"}
        check_fields(d, fields, cls.peft_type)
        if d.get("rank_pattern"):  # peft 0.21.2 builds every layer with r regardless: its tensors say so
            warnings.warn(f"adapter_config.json sets rank_pattern={d['rank_pattern']!r}, which peft's HiRA ignores "
                          f"(every layer has r={d.get('r', 32)}); trimtune ignores it too", stacklevel=2)
        init = d.get("init_weights", True)
        if init not in INIT_FROM_PEFT:
            raise ConfigError(f"adapter_config.json sets init_weights={init!r}; a HIRA file has one of {list(INIT_FROM_PEFT)}")
        return cls(
            r=d.get("r", 32),
            dropout=d.get("hira_dropout", 0.0),
            targets=targets_from_peft(
                d.get("target_modules"), d.get("exclude_modules"), d.get("layers_to_transform"), d.get("layers_pattern")
            ),
            init=INIT_FROM_PEFT[init],
            modules_to_save=list(d.get("modules_to_save") or []),
        )
