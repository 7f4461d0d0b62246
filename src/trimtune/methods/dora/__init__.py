"""DoRA (Liu et al., 2024): weight-decomposed LoRA, a trained magnitude per output unit (see ``delta.py``).

Its files are peft's LoRA files with ``use_dora: true``: DoRA claims those, LoRA the others.
"""

from ...core.registry import Method, register
from .delta import DoraConfig, DoraDelta, make_dora

register(Method("dora", DoraConfig, make_delta=make_dora, peft_type="LORA",
                claims_peft=lambda d: d.get("use_dora", False) is True))

__all__ = ["DoraConfig", "DoraDelta", "make_dora"]
