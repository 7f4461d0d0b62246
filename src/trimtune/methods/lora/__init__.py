"""LoRA (Hu et al., 2021): a low-rank update added to frozen weights (see ``delta.py``)."""

from ...core.registry import Method, register
from .delta import LoraConfig, LoraDelta, MaskedLoraDelta, make_lora

register(Method("lora", LoraConfig, make_delta=make_lora, peft_type="LORA",
                claims_peft=lambda d: not d.get("use_dora", False)))

__all__ = ["LoraConfig", "LoraDelta", "MaskedLoraDelta", "make_lora"]
