"""Attention heads as pruning units for Hugging Face BERT, Llama and GPT-2.

A head couples slices of several layers: its rows of the query/key/value projections and its
columns of the output projection. A head's score is the norm of the element scores over all of
its slices; pruning it zeroes every slice and records the head index (``"heads"``) and the rows /
columns (``"out"`` / ``"in"``) on each layer. With grouped-query attention (Llama,
``num_key_value_heads < num_attention_heads``) the unit is the query head; a key/value head is
zeroed once every query head that reads it is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.architectures import with_blocks
from ..core.attention_heads import attention_heads
from ..core.masks import canonical_mask, pruned_structures, record_pruned, set_canonical_mask
from ..core.state import wrap
from .granularity import Granularity, Units, reduce


@dataclass
class AttentionBlock:
    prefix: str
    query: list[str]  # layers whose output rows belong to one head (q, k, v; only q under GQA)
    shared: list[str]  # GQA key/value layers: rows per kv head, shared by a group of query heads
    output: str  # output projection: columns per head
    heads: int
    kv_heads: int
    head_dim: int
    qkv_fused: bool = False  # GPT-2's c_attn: q, k, v stacked along the output


def attention_blocks(model) -> list[AttentionBlock]:
    """Each transformer block's attention as pruning units (empty for a model whose block layout
    trimtune does not know); the heads are counted by ``core/attention_heads.py``."""
    found = []
    for b in attention_heads(model):
        if b.fused:  # GPT-2: q, k, v stacked along c_attn's outputs
            found.append(AttentionBlock(b.attention_name, [b.qkv], [], b.o, b.heads, b.heads, b.head_dim, True))
        elif b.kv_heads == b.heads:  # plain multi-head attention: q, k and v rows all belong to the head
            found.append(AttentionBlock(b.attention_name, [b.q, b.k, b.v], [], b.o, b.heads, b.kv_heads, b.head_dim))
        else:
            found.append(AttentionBlock(b.attention_name, [b.q], [b.k, b.v], b.o, b.heads, b.kv_heads, b.head_dim))
    return found


class Heads(Granularity):
    structured = True

    def unit_sets(self, model, layers, importance, norm) -> list[Units]:
        blocks = [b for b in attention_blocks(model) if any(q in layers for q in b.query)]
        if not blocks:
            raise ValueError(
                "head pruning found no attention block among the targets; supported model types: "
                f"{', '.join(with_blocks())} (select their query projections, or leave targets=None)"
            )
        return [self._units(model, block, importance, norm) for block in blocks]

    @staticmethod
    def _slices(block: AttentionBlock, head: int) -> list[tuple[str, int, torch.Tensor]]:
        """(layer, canonical axis, indices) of one query head: its rows in the query layer(s), its
        columns in the output layer (and, fused GPT-2, its key and value rows)."""
        rows = torch.arange(head * block.head_dim, (head + 1) * block.head_dim)
        embed = block.heads * block.head_dim
        query_rows = torch.cat([rows + j * embed for j in range(3)]) if block.qkv_fused else rows
        return [*((q, 0, query_rows) for q in block.query), (block.output, 1, rows)]

    def _units(self, model, block, importance, norm) -> Units:
        names = [*block.query, *block.shared, block.output]
        layers = {n: wrap(model, n) for n in names}
        canon = {n: layers[n].kind.to_canonical(importance(n, layers[n])) for n in block.query + [block.output]}
        scores, alive = [], []
        for head in range(block.heads):
            parts = [canon[n].index_select(axis, idx.to(canon[n].device)).flatten() for n, axis, idx in self._slices(block, head)]
            scores.append(reduce(torch.cat(parts), norm, 0))
            masks = [canonical_mask(layers[n]).index_select(axis, idx.to(layers[n].weight.device)) for n, axis, idx in self._slices(block, head)]
            alive.append(any(bool(m.any()) for m in masks))

        def zero(idx):
            for head in idx.tolist():
                for n, axis, rows in self._slices(block, head):
                    _zero_slice(layers[n], axis, rows)
                    record_pruned(layers[n], "heads", [head])
            self._zero_shared_kv(block, layers)

        return Units(block.prefix, torch.stack(scores).cpu(), torch.tensor(alive), zero, keep_largest=True, layers=names)

    @staticmethod
    def _zero_shared_kv(block, layers) -> None:
        """Zero a key/value head once all query heads that share it are pruned."""
        pruned = set(record_heads(layers[block.query[0]]))
        group = block.heads // block.kv_heads
        for kv in range(block.kv_heads):
            if all(h in pruned for h in range(kv * group, (kv + 1) * group)):
                rows = torch.arange(kv * block.head_dim, (kv + 1) * block.head_dim)
                for n in block.shared:
                    _zero_slice(layers[n], 0, rows)
                    record_pruned(layers[n], "heads", [kv])

    def __repr__(self):
        return "Heads()"


def record_heads(layer) -> list[int]:
    return pruned_structures(layer).get("heads", [])


def _zero_slice(layer, axis: int, idx: torch.Tensor) -> None:
    canon = canonical_mask(layer).clone()
    canon.index_fill_(axis, idx.to(canon.device), 0)
    set_canonical_mask(layer, canon)
    record_pruned(layer, "out" if axis == 0 else "in", idx.tolist())
