"""The attention heads of each transformer block, counted in one place.

From the architecture table's names and the layers' own widths: a head is ``head_dim`` rows of the
query projection (GPT-2: of each third of its fused ``c_attn``) and ``head_dim`` columns of the output
projection; with grouped-query attention the key/value projections hold fewer heads. Counting from
widths (not from config attributes) stays true for a model sliced in place. Head pruning, physical
shrinking and the structured LLM pipeline read heads here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .architectures import Architecture, architecture, block_list, head_dim
from .layer_kinds import kind_class_for


@dataclass(frozen=True)
class BlockHeads:
    prefix: str  # the block's dotted name and a dot ("" when counted on the block itself)
    attention: nn.Module  # the module that states head_dim (and whose head counts shrinking updates)
    attention_name: str  # the attention container (arch.attention), full dotted name
    q: str | None  # full dotted names of the projections (q/k/v None when fused into qkv)
    k: str | None
    v: str | None
    qkv: str | None
    o: str
    heads: int  # query heads
    kv_heads: int
    head_dim: int

    @property
    def fused(self) -> bool:
        return self.qkv is not None


def units(module: nn.Module, dim: str) -> int:
    """Output (``"out"``) or input (``"in"``) units of a layer, wrapped by trimtune or not."""
    shell = getattr(module, "base_layer", module)
    out_units, in_units = kind_class_for(shell)(shell).weight_shape(module.weight)
    return out_units if dim == "out" else in_units


def heads_of(block: nn.Module, arch: Architecture, prefix: str = "") -> BlockHeads:
    """The heads of one block, whose layout is ``arch``'s."""
    name = {part: prefix + getattr(arch, part) if getattr(arch, part) else None for part in ("q", "k", "v", "qkv", "o", "attention")}
    if arch.qkv:  # GPT-2: q, k and v stacked along c_attn's outputs; c_proj reads heads x head_dim
        attention = block.get_submodule(arch.attention)
        width = head_dim(attention)
        heads = kv_heads = units(block.get_submodule(arch.o), "in") // width
    else:
        attention = block.get_submodule(arch.q.rsplit(".", 1)[0])
        width = head_dim(attention)
        heads = units(block.get_submodule(arch.q), "out") // width
        kv_heads = units(block.get_submodule(arch.k), "out") // width
    return BlockHeads(prefix, attention, name["attention"], name["q"], name["k"], name["v"], name["qkv"], name["o"],
                      heads, kv_heads, width)


def attention_heads(model: nn.Module) -> list[BlockHeads]:
    """Every block's heads, in order (empty for a model whose block layout the table does not know)."""
    arch = architecture(model)
    if arch is None or not arch.has_blocks:
        return []
    prefix, blocks = block_list(model, arch)
    return [heads_of(block, arch, f"{prefix}.{i}.") for i, block in enumerate(blocks)]
