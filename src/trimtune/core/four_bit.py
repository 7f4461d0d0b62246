"""4-bit base weights (QLoRA, Dettmers et al., 2023) with bitsandbytes: NF4 or FP4, double quantisation.

The helpers every layer needs to carry a packed weight; the model-level verb ``quantize_base``
(in ``methods/qlora``) wraps the targeted linear layers and replaces each frozen weight by a
bitsandbytes ``Params4bit`` *in the wrapper*, under the original state-dict key: a 4-bit base is a
property of the weight, not another layer class. ``LinearKind.forward`` sees the weight's
``quant_state`` and calls ``linear_4bit``, which runs bitsandbytes' 4-bit matmul (it dequantises
block by block; the packed weight is all that stays in memory). Deltas such as LoRA then go on top
as usual (``QLoraConfig`` does both in one ``apply``). Merging into a 4-bit base dequantises it,
with a warning, since the merged sum cannot be stored in 4 bits without a new rounding.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigError, check_choice

INSTALL_HINT = 'bitsandbytes is needed for 4-bit bases: pip install bitsandbytes  (or: pip install "trimtune[quant]")'
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def require_bitsandbytes() -> None:
    """Refuse at once, without importing it (seconds), when bitsandbytes is not installed: a QLoRA config
    is checked before any model is loaded or any directory made."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(INSTALL_HINT)


def bnb_module():
    try:
        import bitsandbytes
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return bitsandbytes


@dataclass
class QuantConfig:
    """quant_type: "nf4" (normal-float, QLoRA's choice) or "fp4". double_quant: also quantise the
    per-block scales (saves ~0.4 bit/parameter). compute_dtype: dtype of the dequantised blocks in
    the matmul ("float32", "bfloat16", "float16"); "bfloat16" is QLoRA's setting and the faster one
    where the hardware has bf16 units (GPUs since Ampere, CPUs with AVX512-BF16/AMX). blocksize:
    weights per scale."""

    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"
    blocksize: int = 64

    def __post_init__(self):
        check_choice("quant_type", self.quant_type, ("nf4", "fp4"))
        check_choice("compute_dtype", self.compute_dtype, tuple(COMPUTE_DTYPES))
        check_choice("blocksize", self.blocksize, (64, 128, 256, 512, 1024, 2048, 4096))
        if not isinstance(self.double_quant, bool):
            raise ConfigError(f"double_quant must be True or False, got {self.double_quant!r}")


def is_4bit(weight) -> bool:
    return getattr(weight, "quant_state", None) is not None


def quantize_weight(weight: torch.Tensor, config: QuantConfig) -> nn.Parameter:
    """A frozen 4-bit copy of ``weight`` (out, in); the quantisation rounds from ``compute_dtype``."""
    bnb = bnb_module()
    data = weight.detach().to(COMPUTE_DTYPES[config.compute_dtype]).contiguous()
    packed = bnb.nn.Params4bit(
        data, requires_grad=False, blocksize=config.blocksize,
        compress_statistics=config.double_quant, quant_type=config.quant_type,
    )
    return packed._quantize(weight.device)


def is_cpu_packed(weight) -> bool:
    return bool(getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False))


def cpu_kernel_available() -> bool:
    """bitsandbytes' fast 4-bit CPU kernel needs AVX512-BF16 (or AMX)."""
    from bitsandbytes.nn.modules import has_avx512bf16  # optional dependency: imported only when asked

    return bool(has_avx512bf16())


def fits_cpu_kernel(weight) -> bool:
    """The CPU kernel packs outputs in blocks of 32, and inputs in whole quantisation blocks."""
    out_features, in_features = weight.quant_state.shape[:2]
    return out_features % 32 == 0 and in_features % weight.quant_state.blocksize == 0


def pack_for_cpu(weight, pack: bool = True) -> None:
    """Repack a 4-bit weight in place for bitsandbytes' CPU inference kernel (or back: ``pack=False``).
    The kernel computes in bf16: about 4e-3 relative to the fp32 path, several times faster."""
    from bitsandbytes.nn import modules  # the conversion bitsandbytes' own Linear4bit uses in eval mode

    if pack and not is_cpu_packed(weight):
        original_state = copy.deepcopy(weight.quant_state)  # packing rounds the block scales to bf16: keep them
        weight.data, weight.quant_state = modules._convert_weight_packed_for_cpu(weight.data, weight.quant_state)
        weight._trimtune_unpacked_state = original_state
    elif not pack and is_cpu_packed(weight):
        weight.data, _ = modules._convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
        weight.quant_state = weight.__dict__.pop("_trimtune_unpacked_state")


def dequantize_weight(weight) -> torch.Tensor:
    if is_cpu_packed(weight):
        raise ValueError("this 4-bit weight is packed for CPU inference; call trimtune.pack_4bit_for_cpu(model, False) first")
    return bnb_module().functional.dequantize_4bit(weight.data, weight.quant_state)


def linear_4bit(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, W, b)`` with a packed 4-bit ``W``, computed in the dtype it was quantised from
    (or, for a weight packed for bitsandbytes' CPU kernel, by that kernel in bf16)."""
    if is_cpu_packed(weight):
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("this 4-bit weight is packed for CPU inference (no gradients through it); "
                               "call trimtune.pack_4bit_for_cpu(model, False) before training")
        return bnb_module().matmul_4bit(x, weight, bias=bias, quant_state=weight.quant_state).to(x.dtype)
    compute_dtype = weight.quant_state.dtype
    bias = None if bias is None else bias.to(compute_dtype)
    y = bnb_module().matmul_4bit(x.to(compute_dtype), weight.t(), quant_state=weight.quant_state, bias=bias)
    return y.to(x.dtype)


def dequantize_base(layer, action: str) -> None:
    """Replace a layer's 4-bit base by its dequantised float weight (to merge into it, or to unload)."""
    warnings.warn(
        f"{action} the 4-bit base of {layer.module_name or layer.describe()} dequantises it to "
        f"{layer.weight.quant_state.dtype}: the weight keeps the 4-bit rounding and is no longer 4-bit. "
        "To store it in 4 bits again, call trimtune.quantize_base(model) afterwards (a second rounding)",
        stacklevel=3,
    )
    layer.weight = nn.Parameter(dequantize_weight(layer.weight), requires_grad=False)


def logical_numel(param: torch.Tensor) -> int:
    """Parameters a tensor stands for: a packed 4-bit weight holds two per byte."""
    return math.prod(param.quant_state.shape) if is_4bit(param) else param.numel()
