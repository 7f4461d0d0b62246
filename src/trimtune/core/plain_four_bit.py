"""A 4-bit base stored as plain tensors, so that FSDP2 can shard it.

bitsandbytes' ``Params4bit`` keeps its block scales (``absmax``) and the rest of its quantisation
state as a Python attribute, ``quant_state``. FSDP2 shards a parameter by copying slices of its data
into a new DTensor and all-gathers it into a plain tensor: the attribute does not survive. So before
sharding, ``store_plain`` splits each packed weight into two frozen Parameters of the layer that
FSDP2 shards like any other (along dim 0, padding uneven sizes; its all-gather copies the mixed
uint8/fp32 inputs of one unit as bytes):

- ``weight``: the packed 4-bit codes (uint8, two per byte), under the original state-dict key;
- ``weight_absmax``: the per-block scales (fp32, or uint8 with double quantisation).

What needs no sharding stays a Python attribute of the layer, ``quant_template``: a copy of the
``QuantState`` without its ``absmax`` (shape, dtype, blocksize, quant type, the 256-entry code and,
with double quantisation, the scales of the scales: 1/256 of ``absmax``). ``live_weight`` rebuilds
the state around the tensors the forward sees (the gathered ones under FSDP2, the local ones
otherwise), so bitsandbytes' matmul runs on exactly the bytes a ``Params4bit`` would hold.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .four_bit import is_cpu_packed

ABSMAX = "weight_absmax"


def store_plain(layer: nn.Module) -> None:
    """Replace ``layer.weight`` (a ``Params4bit``) by plain frozen tensors; see the module docstring."""
    weight = layer.weight
    if is_cpu_packed(weight):
        raise ValueError(f"{layer.module_name or 'a layer'} is packed for bitsandbytes' CPU inference kernel; "
                         "call trimtune.pack_4bit_for_cpu(model, False) before sharding")
    template = copy.copy(weight.quant_state)  # shallow: codes and nested scales are small and shared
    absmax = template.absmax
    template.absmax = None  # the template must not keep the whole scales alive once they are sharded
    layer.weight = nn.Parameter(weight.data, requires_grad=False)
    layer.register_parameter(ABSMAX, nn.Parameter(absmax, requires_grad=False))
    layer.quant_template = template


def is_plain_4bit(layer: nn.Module) -> bool:
    return layer.__dict__.get("quant_template") is not None


def live_weight(layer: nn.Module) -> torch.Tensor:
    """The base weight as the forward uses it: ``layer.weight``, or for a plainly stored 4-bit base
    the packed codes carrying a ``quant_state`` rebuilt around the current scales."""
    template = layer.__dict__.get("quant_template")
    if template is None:
        return layer.weight
    state = copy.copy(template)
    state.absmax = getattr(layer, ABSMAX)
    packed = layer.weight.detach()  # a new tensor object on the same bytes: the attribute stays off the parameter
    packed.quant_state = state
    return packed
