"""``quantize_base``: store the targeted linear layers' weights in 4 bits, inside their wrappers."""

from __future__ import annotations

from torch import nn

from ...core.four_bit import (
    QuantConfig,
    bnb_module,
    cpu_kernel_available,
    fits_cpu_kernel,
    is_4bit,
    pack_for_cpu,
    quantize_weight,
)
from ...core.layer_kinds import LinearKind, kind_class_for
from ...core.state import layers, wrap
from ...core.targets import select


def quantize_base(model: nn.Module, targets="all-linear", config: QuantConfig | None = None) -> list[str]:
    """Store the weights of the ``targets`` linear layers in 4 bits (default: every linear layer but
    the output head). Returns the names of the quantised layers."""
    config = config or QuantConfig()
    bnb_module()
    names = select(model, targets)
    for name in names:
        module = model.get_submodule(name)
        base = getattr(module, "base_layer", module)
        if kind_class_for(base) is not LinearKind:
            raise ValueError(f"only nn.Linear weights can be stored in 4 bits; {name} is {type(base).__name__}")
    for name in names:
        layer = wrap(model, name)
        if not is_4bit(layer.weight):
            layer.weight = quantize_weight(layer.weight, config)
    return names


def pack_4bit_for_cpu(model: nn.Module, enable: bool = True) -> list[str]:
    """Inference speed on a CPU: repack every 4-bit base for bitsandbytes' CPU kernel (what bitsandbytes'
    own ``Linear4bit`` does in eval mode), which computes in bf16: several times faster than trimtune's
    default fp32 path, at about 4e-3 relative difference. ``enable=False`` restores the default layout
    (needed before training, merging or unloading). Layers whose shape the kernel cannot take (outputs
    not a multiple of 32) keep the default path. Returns the names of the repacked layers."""
    names = [name for name, layer in layers(model) if is_4bit(layer.weight) and fits_cpu_kernel(layer.weight)]
    if enable and names and not cpu_kernel_available():
        raise RuntimeError("bitsandbytes' 4-bit CPU kernel needs a CPU with AVX512-BF16 or AMX; this one has "
                           "neither, so the default fp32 path (trimtune's matmul_4bit) is the one to use")
    for name in names:
        pack_for_cpu(model.get_submodule(name).weight, enable)
    return names
