"""How to run each supported base layer type as a function of (x, weight, bias).

The wrapper (``layers.TunedLayer``) owns the base layer's parameters and calls its op functionally,
so a mask or a dense delta can be folded into the weight without touching the original class.
Every kind also states the weight's *canonical* layout ``(out, in, *kernel)``: deltas, importances
and structured pruning work in that layout and convert at the edge (GPT-2's Conv1D and Embedding
store their weight transposed).

A kind is looked up along the base class's MRO, so subclasses (bitsandbytes' ``Linear4bit`` is an
``nn.Linear``) are covered. Add a layer type with ``@register_kind(SomeModule)``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from .four_bit import linear_4bit

_KINDS: dict[type, type[LayerKind]] = {}


def register_kind(*module_types: type):
    def decorate(kind_cls):
        for module_type in module_types:
            _KINDS[module_type] = kind_cls
        return kind_cls

    return decorate


def _gpt2_conv1d_type() -> type | None:
    # A Conv1D instance implies transformers is loaded; never import it (seconds) for a plain CNN.
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    return getattr(pytorch_utils, "Conv1D", None)


def kind_class_for(module: nn.Module) -> type[LayerKind] | None:
    conv1d = _gpt2_conv1d_type()
    if conv1d is not None and conv1d not in _KINDS:
        _KINDS[conv1d] = GPT2Conv1DKind
    for cls in type(module).__mro__:
        if cls in _KINDS:
            return _KINDS[cls]
    return None


def supported_types() -> list[str]:
    kind_class_for(nn.Identity())  # make sure lazily registered kinds are listed
    return sorted(t.__name__ for t in _KINDS)


class LayerKind:
    """The functional form of one base layer. Holds the base module only for its hyper-parameters."""

    out_dim = 0  # where the output units sit in the native weight layout
    in_dim = 1
    output_channel_dim = -1  # where the output units sit in the layer's output tensor
    input_channel_dim = -1
    linear_layout = False  # y = x Wᵀ over the last dim: the fused low-rank kernel applies (core/low_rank.py)

    def __init__(self, shell: nn.Module):
        self.shell = shell

    def forward(self, x, weight, bias):
        raise NotImplementedError

    def forward_units(self, x, weight, bias, keep: torch.Tensor):
        """The forward computing only output units ``keep``; the others come out as 0."""
        part_weight = self.from_canonical(self.to_canonical(weight).index_select(0, keep))
        part = self.forward(x, part_weight, None if bias is None else bias.index_select(0, keep))
        dim = self.output_channel_dim % part.dim()
        shape = list(part.shape)
        shape[dim] = self.weight_shape(weight)[0]
        return part.new_zeros(shape).index_copy_(dim, keep, part)

    def to_canonical(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def from_canonical(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def weight_shape(self, weight: torch.Tensor) -> tuple[int, int]:
        """(out_features, in_features) of the base weight."""
        quant_state = getattr(weight, "quant_state", None)
        if quant_state is not None:  # a packed 4-bit weight: its logical shape is in the quantisation state
            return tuple(quant_state.shape[:2])
        canonical = self.to_canonical(weight)
        return canonical.shape[0], canonical.shape[1]

    # How a low-rank pair (A: r x in, B: out x r) runs with the layer's own op (used by core/low_rank.py).
    def factor_shapes(self, weight: torch.Tensor, r: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        out_features, in_features = self.weight_shape(weight)
        return (r, in_features), (out_features, r)

    def project_in(self, x, a):
        return F.linear(x, a)

    def add_project_out(self, y, h, b, scale: float):
        """``y + scale * h @ b.T`` as one fused addmm (no extra pass over y for the scale or the add)."""
        out_shape = y.shape
        return torch.addmm(
            y.reshape(-1, out_shape[-1]), h.reshape(-1, h.shape[-1]), b.t(), alpha=scale
        ).view(out_shape)

    def factors_to_weight(self, a, b) -> torch.Tensor:
        """The dense product ``B @ A`` in the base weight's native layout."""
        return self.from_canonical(b @ a)


@register_kind(nn.Linear)
class LinearKind(LayerKind):
    linear_layout = True

    def forward(self, x, weight, bias):
        quant_state = getattr(weight, "quant_state", None)
        if quant_state is not None:  # a bitsandbytes 4-bit weight: the base stays packed
            return linear_4bit(x, weight, bias)
        return F.linear(x, weight, bias)


class GPT2Conv1DKind(LayerKind):
    """transformers' Conv1D: a Linear whose weight is stored (in, out)."""

    out_dim, in_dim = 1, 0
    linear_layout = True

    def forward(self, x, weight, bias):
        out_shape = x.shape[:-1] + (weight.shape[1],)
        return torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight).view(out_shape)

    def to_canonical(self, weight):
        return weight.t()

    def from_canonical(self, weight):
        return weight.t()


@register_kind(nn.Embedding)
class EmbeddingKind(LayerKind):
    """Canonical layout (embedding_dim, num_embeddings): an embedding is a linear map of one-hot rows."""

    out_dim, in_dim = 1, 0

    def forward(self, x, weight, bias):
        e = self.shell
        return F.embedding(
            x, weight, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse
        )

    def to_canonical(self, weight):
        return weight.t()

    def from_canonical(self, weight):
        return weight.t()

    def project_in(self, x, a):
        e = self.shell
        return F.embedding(x, a.t(), e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)


@register_kind(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvKind(LayerKind):
    output_channel_dim = 1
    input_channel_dim = 1

    def __init__(self, shell):
        super().__init__(shell)
        self.conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(shell.kernel_size)]

    def _conv(self, x, weight, bias, groups):
        c = self.shell
        if c.padding_mode != "zeros":
            x = F.pad(x, c._reversed_padding_repeated_twice, mode=c.padding_mode)
            return self.conv(x, weight, bias, c.stride, 0, c.dilation, groups)
        return self.conv(x, weight, bias, c.stride, c.padding, c.dilation, groups)

    def forward(self, x, weight, bias):
        return self._conv(x, weight, bias, self.shell.groups)

    def factor_shapes(self, weight, r):
        if self.shell.groups != 1:
            raise ValueError(
                f"low-rank deltas on grouped convolutions (groups={self.shell.groups}) are not supported; "
                "target convolutions with groups=1"
            )
        kernel = tuple(weight.shape[2:])
        return (r, weight.shape[1], *kernel), (weight.shape[0], r) + (1,) * len(kernel)

    def project_in(self, x, a):
        return self._conv(x, a, None, 1)

    def add_project_out(self, y, h, b, scale):
        return y + scale * self.conv(h, b)

    def factors_to_weight(self, a, b):
        product = b.flatten(1) @ a.flatten(1)
        return product.view(b.shape[0], *a.shape[1:])
