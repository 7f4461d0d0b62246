"""VeraConfig and its peft ``adapter_config.json`` form (peft's ``VeraConfig``, peft_type "VERA")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...core.config import ConfigError, check_choice, check_fraction, check_positive_int
from ...core.io.peft_format import check_fields, peft_target_modules, targets_from_peft
from ...core.layer_kinds import GPT2Conv1DKind
from ...core.targets import TargetSpec


@dataclass
class VeraConfig:
    """r: rank of the shared random projections (VeRA wants it large: its parameters per layer are
    r + out, not r · (in + out)). targets: regex / names / predicate / None (the architecture's
    default, as LoRA's). projection_prng_key: seed of the generator that draws the shared A and B
    (Kaiming-uniform, as peft). save_projection: write A and B into the adapter file (otherwise a
    loader regenerates them from the key). dropout: on the adapter's input. d_initial: initial value
    of every λ_d entry (λ_b starts at zero, so the model starts unchanged). bias: "none" or "all".
    modules_to_save: modules trained in full, one copy per adapter (e.g. a classification head).
    """

    peft_type: ClassVar[str] = "VERA"

    r: int = 256
    targets: TargetSpec = None
    projection_prng_key: int = 0
    save_projection: bool = True
    dropout: float = 0.0
    d_initial: float = 0.1
    bias: str = "none"
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_positive_int("r", self.r)
        check_fraction("dropout", self.dropout)
        check_choice("bias", self.bias, ("none", "all"))
        if not isinstance(self.projection_prng_key, int) or isinstance(self.projection_prng_key, bool):
            raise ConfigError(f"projection_prng_key must be an integer seed, got {self.projection_prng_key!r}")
        if not isinstance(self.save_projection, bool):
            raise ConfigError(f"save_projection must be True or False, got {self.save_projection!r}")
        if isinstance(self.d_initial, bool) or not isinstance(self.d_initial, (int, float)):
            raise ConfigError(f"d_initial must be a number, got {self.d_initial!r}")
        self.modules_to_save = list(self.modules_to_save or [])

    # ---- PEFT adapter files (convention: core/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        return {
            "r": self.r,
            "target_modules": peft_target_modules(self.targets, list(layers)),
            "projection_prng_key": self.projection_prng_key,
            "save_projection": self.save_projection,
            "vera_dropout": self.dropout,
            "d_initial": self.d_initial,
            "bias": self.bias,
            "modules_to_save": self.modules_to_save or None,
            "init_weights": True,
            "fan_in_fan_out": any(isinstance(layer.kind, GPT2Conv1DKind) for layer in layers.values()),
        }

    @classmethod
    def from_peft_dict(cls, d: dict) -> VeraConfig:
        # init_weights only says how peft initialised λ (the file holds their values); fan_in_fan_out is
        # GPT-2 Conv1D's storage layout, which trimtune's layer kinds know.
        layout_only = {"init_weights", "fan_in_fan_out"}
        fields = {"r", "target_modules", "projection_prng_key", "save_projection", "vera_dropout", "d_initial",
                  "bias", "modules_to_save", "layers_to_transform", "layers_pattern"}
        check_fields(d, fields | layout_only, cls.peft_type)
        return cls(
            r=d.get("r", 256),
            targets=targets_from_peft(d.get("target_modules"), None, d.get("layers_to_transform"), d.get("layers_pattern")),
            projection_prng_key=d.get("projection_prng_key", 0),
            save_projection=d.get("save_projection", True),
            dropout=d.get("vera_dropout", 0.0),
            d_initial=d.get("d_initial", 0.1),
            bias=d.get("bias", "none"),
            modules_to_save=list(d.get("modules_to_save") or []),
        )
