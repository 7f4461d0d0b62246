"""One decoder block's parts, found through the architecture table, and how to cut them.

A head is ``head_dim`` consecutive rows of q (and, for its KV group, of k and v) and the same columns
of o; an FFN channel is one row of every up/gate projection and one column of down; a hidden channel
is one entry of each norm, one column of every projection that reads the residual stream (q, k, v,
up/gate) and one row of every projection that writes it (o, down). Cutting goes through
``core.slicing.slice_module``, which keeps a layer's size attributes true.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.architectures import Architecture, architecture, model_types
from ...core.attention_heads import heads_of
from ...core.config import ConfigError
from ...core.layer_kinds import kind_class_for
from ...core.slicing import slice_module


def canonical_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in) whatever the storage (GPT-2's Conv1D keeps (in, out))."""
    return kind_class_for(module)(module).to_canonical(module.weight)


def set_canonical_weight(module: nn.Module, weight: torch.Tensor) -> None:
    kind = kind_class_for(module)
    stored = weight.t() if kind.out_dim == 1 else weight
    module.weight.data = stored.to(module.weight.dtype).contiguous()


def keep_norm_channels(norm: nn.Module, keep: torch.Tensor) -> None:
    """LayerNorm or RMSNorm: their per-channel weight (and bias) lose the removed channels."""
    for name in ("weight", "bias"):
        tensor = getattr(norm, name, None)
        if tensor is not None:
            setattr(norm, name, nn.Parameter(tensor.detach().index_select(0, keep).clone(), requires_grad=tensor.requires_grad))
    if hasattr(norm, "normalized_shape"):
        norm.normalized_shape = (len(keep),)


class BlockParts:
    """The named modules of one block, from the table entry of its model type."""

    def __init__(self, block: nn.Module, arch: Architecture):
        self.block, self.arch = block, arch
        self.fused = arch.qkv is not None
        self.o = block.get_submodule(arch.o)
        self.ups = [block.get_submodule(name) for name in arch.ffn_up]
        self.down = block.get_submodule(arch.ffn_down)
        self.attn_norm = block.get_submodule(arch.attn_norm)
        self.ffn_norm = block.get_submodule(arch.ffn_norm)
        if self.fused:
            self.qkv = block.get_submodule(arch.qkv)
            self.attention = block.get_submodule(arch.attention)
        else:
            self.q, self.k, self.v = (block.get_submodule(getattr(arch, n)) for n in "qkv")
            self.attention = block.get_submodule(arch.q.rsplit(".", 1)[0])
        self.head_dim = heads_of(block, arch).head_dim

    # ---------------------------------------------------------------- shapes
    @property
    def q_heads(self) -> int:
        return heads_of(self.block, self.arch).heads  # counted again: cutting changes it

    @property
    def kv_heads(self) -> int:
        return heads_of(self.block, self.arch).kv_heads

    @property
    def ffn_width(self) -> int:
        return canonical_weight(self.down).shape[1]

    def readers(self) -> list[nn.Module]:
        """Projections that read the residual stream (their input columns are hidden channels)."""
        return ([self.qkv] if self.fused else [self.q, self.k, self.v]) + self.ups

    def writers(self) -> list[nn.Module]:
        """Projections that write into the residual stream (their output rows are hidden channels)."""
        return [self.o, self.down]

    # ---------------------------------------------------------------- cuts
    def keep_hidden(self, keep: torch.Tensor) -> None:
        keep_norm_channels(self.attn_norm, keep)
        keep_norm_channels(self.ffn_norm, keep)
        for module in self.readers():
            slice_module(module, "in", keep)
        for module in self.writers():
            slice_module(module, "out", keep)

    def keep_ffn(self, keep: torch.Tensor) -> None:
        for up in self.ups:
            slice_module(up, "out", keep)
        slice_module(self.down, "in", keep)

    def keep_heads(self, q_keep: list[int], kv_keep: list[int]) -> None:
        """Keep query heads ``q_keep`` and KV heads ``kv_keep`` (sorted head indices)."""
        q_channels = head_channels(q_keep, self.head_dim)
        slice_module(self.q, "out", q_channels)
        if len(kv_keep) != self.kv_heads:
            kv_channels = head_channels(kv_keep, self.head_dim)
            slice_module(self.k, "out", kv_channels)
            slice_module(self.v, "out", kv_channels)
        slice_module(self.o, "in", q_channels)
        self.after_heads()

    def after_heads(self) -> None:
        """transformers' attention reads its head counts from attributes set at construction."""
        q_heads, kv_heads = self.q_heads, self.kv_heads
        if hasattr(self.attention, "num_key_value_groups"):
            self.attention.num_key_value_groups = q_heads // kv_heads
        for attr, value in (("num_heads", q_heads), ("num_attention_heads", q_heads), ("num_key_value_heads", kv_heads)):
            if hasattr(self.attention, attr):
                setattr(self.attention, attr, value)


def head_channels(heads: list[int], width: int) -> torch.Tensor:
    return (torch.as_tensor(heads, dtype=torch.long)[:, None] * width + torch.arange(width)).reshape(-1)


def parts_of(block: nn.Module, model_type: str) -> BlockParts:
    return BlockParts(block, architecture(model_type))


def check_supported(model_type: str, heads: bool, hidden: bool) -> None:
    """Refuse widths the model type's config cannot describe, before anything is touched."""
    arch = architecture(model_type)
    if arch is None or arch.attn_norm is None or arch.ffn_norm is None:
        known = model_types(lambda arch: arch.attn_norm and arch.ffn_norm)
        raise ConfigError(f"structured shrinking does not know the decoder layout of model_type {model_type!r}; known: {', '.join(known)}")
    if arch.qkv is not None and (heads or hidden):
        raise ConfigError(
            f"{model_type}'s config ties the attention width and the head width to the hidden size (n_embd / n_head), "
            "so a model with fewer heads or a narrower hidden width cannot be written as a plain directory; "
            "remove FFN channels (ffn) or whole blocks (drop_layers) instead"
        )
