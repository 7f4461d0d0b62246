"""QLoRA (Dettmers et al., 2023): LoRA over a 4-bit base. Its files are LoRA's: a QLoRA adapter
saves as peft's "LORA" type, and loading one asks for the base to be quantised first (``prepare_base``)."""

from ...core.registry import Method, register
from .config import QLoraConfig, apply_qlora
from .quantize import pack_4bit_for_cpu, quantize_base


def _prepare_base(model, config) -> None:
    quantize_base(model, config.quantize, config.quant)  # the adapter was trained (and fingerprinted) on it


register(Method("qlora", QLoraConfig, apply=apply_qlora, prepare_base=_prepare_base))

__all__ = ["QLoraConfig", "pack_4bit_for_cpu", "quantize_base"]
