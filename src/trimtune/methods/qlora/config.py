"""QLoRA: LoRA over a 4-bit base, in one ``apply``.

``QLoraConfig`` is a ``LoraConfig`` plus how to quantise: it stores the ``quantize`` layers (default
every linear layer but the output head) in 4 bits with ``quantize_base`` and then adds LoRA to the
``targets`` exactly as ``LoraConfig`` does (same delta, same files).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.adapters import apply_weight_method
from ...core.config import ConfigError
from ...core.four_bit import QuantConfig, require_bitsandbytes
from ...core.targets import TargetSpec
from ..lora.delta import LoraConfig
from ..lora.make import make_lora
from .quantize import quantize_base


@dataclass
class QLoraConfig(LoraConfig):
    """LoraConfig fields, plus quantize (which layers to store in 4 bits), quant_type ("nf4"/"fp4"),
    double_quant, compute_dtype ("float32"/"bfloat16"/"float16") and blocksize (see QuantConfig)."""

    quantize: TargetSpec = "all-linear"
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"
    blocksize: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.init not in ("default", "gaussian"):  # checked before quantize_base touches the model
            raise ConfigError(
                f"init={self.init!r} moves part of each base weight into the adapter, but QLoRA stores the base in 4 bits, "
                "which cannot hold the exact residual (peft does this with LoftQ, which trimtune does not have yet); "
                "use init='default' or 'gaussian', or apply LoraConfig(init=...) on the float base and quantise after")
        require_bitsandbytes()
        self.quant = QuantConfig(self.quant_type, self.double_quant, self.compute_dtype, self.blocksize)


def apply_qlora(model, config: QLoraConfig, name: str) -> None:
    quantize_base(model, config.quantize, config.quant)
    apply_weight_method(model, config, name, make_lora)
