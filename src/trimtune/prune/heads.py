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
    blocks = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if hasattr(module, "query") and hasattr(module, "key") and hasattr(module, "value") and "SelfAttention" in kind:
            prefix = name.rsplit(".", 1)[0]  # BertAttention holds .self and .output.dense
            heads = module.num_attention_heads
            blocks.append(AttentionBlock(
                prefix, [f"{name}.query", f"{name}.key", f"{name}.value"], [], f"{prefix}.output.dense",
                heads, heads, module.attention_head_size,
            ))
        elif hasattr(module, "q_proj") and hasattr(module, "o_proj") and hasattr(module, "head_dim"):
            config = module.config
            heads = config.num_attention_heads
            kv_heads = getattr(config, "num_key_value_heads", None) or heads
            query, shared = [f"{name}.q_proj"], [f"{name}.k_proj", f"{name}.v_proj"]
            if kv_heads == heads:  # plain multi-head attention: q, k and v rows all belong to the head
                query, shared = query + shared, []
            blocks.append(AttentionBlock(name, query, shared, f"{name}.o_proj", heads, kv_heads, module.head_dim))
        elif hasattr(module, "c_attn") and hasattr(module, "c_proj") and hasattr(module, "split_size"):
            blocks.append(AttentionBlock(
                name, [f"{name}.c_attn"], [], f"{name}.c_proj", module.num_heads, module.num_heads, module.head_dim, True,
            ))
    return blocks


class Heads(Granularity):
    structured = True

    def unit_sets(self, model, layers, importance, norm) -> list[Units]:
        blocks = [b for b in attention_blocks(model) if any(q in layers for q in b.query)]
        if not blocks:
            raise ValueError(
                "head pruning found no attention block among the targets; supported: HF BERT, Llama and GPT-2 "
                "attention (select their query projections, or leave targets=None)"
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
