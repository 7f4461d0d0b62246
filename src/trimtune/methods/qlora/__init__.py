"""QLoRA (Dettmers et al., 2023): LoRA over a 4-bit base. Its files are LoRA's: a QLoRA adapter
saves as peft's "LORA" type; a recipe run quantises the base again before loading one
(``recipes/method_runs.py``)."""

from ...core.method import Method, register
from .config import QLoraConfig, apply_qlora
from .quantize import pack_4bit_for_cpu, quantize_base


@register
class QLora(Method):
    name = "qlora"
    config = QLoraConfig

    def apply(self, model, config: QLoraConfig, name: str) -> None:
        apply_qlora(model, config, name)


__all__ = ["QLoraConfig", "pack_4bit_for_cpu", "quantize_base"]
