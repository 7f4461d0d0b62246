"""LNTuningConfig and its peft ``adapter_config.json`` form (peft's ``LNTuningConfig``, peft_type "LN_TUNING")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...core.io.peft_format import check_fields, peft_target_modules, targets_from_peft
from ...core.targets import TargetSpec

# The norms peft's LN tuning picks per architecture (TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING),
# for the model types trimtune knows, so the defaults select the same modules; BERT, which peft has no entry
# for, gets its LayerNorms (files name them explicitly, so peft loads them all the same).
LN_TUNING_TARGETS: dict[str, list[str]] = {
    "llama": ["input_layernorm", "post_attention_layernorm", "norm"],
    "mistral": ["input_layernorm", "post_attention_layernorm", "norm"],
    "qwen2": ["post_attention_layernorm"],
    "qwen3": ["post_attention_layernorm"],
    "gemma": ["input_layernorm", "post_attention_layernorm", "norm"],
    "gpt2": ["ln_1", "ln_2", "ln_f"],
    "bert": ["LayerNorm"],
}


@dataclass
class LNTuningConfig:
    """targets: the normalisation modules to train (regex / names / predicate; None: the architecture's
    norms, as peft picks them, e.g. Llama's input/post-attention RMSNorms and the final norm). Each
    target gets a trained copy per adapter; the original stays as it was. modules_to_save: modules
    trained in full, one copy per adapter (e.g. a classification head).
    """

    peft_type: ClassVar[str] = "LN_TUNING"

    targets: TargetSpec = None
    modules_to_save: list[str] = field(default_factory=list)
    default_targets: ClassVar[dict[str, list[str]]] = LN_TUNING_TARGETS

    def __post_init__(self):
        self.modules_to_save = list(self.modules_to_save or [])

    # ---- PEFT adapter files (convention: core/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        return {"target_modules": peft_target_modules(self.targets, list(layers)),
                "modules_to_save": self.modules_to_save or None}

    @classmethod
    def from_peft_dict(cls, d: dict) -> LNTuningConfig:
        check_fields(d, {"target_modules", "exclude_modules", "modules_to_save"}, cls.peft_type)
        return cls(targets=targets_from_peft(d.get("target_modules"), d.get("exclude_modules")),
                   modules_to_save=list(d.get("modules_to_save") or []))
