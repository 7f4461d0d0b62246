"""Groups for Hugging Face transformers, from the architecture's known layout.

Attention reshapes channels into heads (``view(..., -1, head_dim)``), which a channel trace cannot
follow, so the per-layer modules come from the architecture table (core/architectures.py). A head group removes whole
heads from q/k/v (rows) and the output projection (columns); with grouped-query attention a kv head
takes its whole group of query heads with it ("kv" mode), or each kv group loses the same number of
query heads ("query" mode). An FFN group removes intermediate units from up/gate (rows) and down
(columns). transformers 5 infers the head count from tensor shapes, so after slicing only a few
attributes need updating (GQA group size, GPT-2's fused split size), done in ``after_shrink``.
"""

from __future__ import annotations

from torch import nn

from ..core.architectures import architecture, block_list
from ..core.attention_heads import attention_heads, units
from .graph import Group, IndexMap, Member


def supports(model: nn.Module) -> bool:
    arch = architecture(model)
    return arch is not None and arch.has_blocks


def head_groups(model: nn.Module, gqa_mode: str = "kv") -> list[Group]:
    groups = []
    for b in attention_heads(model):
        p, hd = b.prefix, b.head_dim
        if b.fused:  # GPT-2: q, k, v fused in one Conv1D, each a third of its outputs
            members = [Member(b.qkv, "out", IndexMap().then(offset=k * b.heads, expand=hd)) for k in range(3)]
            members.append(Member(b.o, "in", IndexMap().then(expand=hd)))
            groups.append(Group(members, size=b.heads, unit=hd, name=f"{p}heads"))
            continue
        rep = b.heads // b.kv_heads
        if rep == 1 or gqa_mode == "kv":  # a kv head and its query heads go together
            qmap, kvmap = IndexMap().then(expand=rep * hd), IndexMap().then(expand=hd)
            members = [Member(b.q, "out", qmap), Member(b.k, "out", kvmap), Member(b.v, "out", kvmap), Member(b.o, "in", qmap)]
            groups.append(Group(members, size=b.kv_heads, unit=hd, name=f"{p}heads"))
        else:  # query heads within each kv group; every group keeps the same count
            for j in range(b.kv_heads):
                qmap = IndexMap().then(offset=j * rep, expand=hd)
                members = [Member(b.q, "out", qmap), Member(b.o, "in", qmap)]
                groups.append(Group(members, size=rep, unit=hd, name=f"{p}kv{j}.query_heads"))
    return groups


def ffn_groups(model: nn.Module) -> list[Group]:
    arch = architecture(model)
    prefix, blocks = block_list(model, arch)
    groups = []
    for i, block in enumerate(blocks):
        p = f"{prefix}.{i}."
        size = units(block.get_submodule(arch.ffn_down), "in")
        members = [Member(p + up, "out") for up in arch.ffn_up] + [Member(p + arch.ffn_down, "in")]
        groups.append(Group(members, size=size, name=f"{p}ffn"))
    return groups


def after_shrink(model: nn.Module) -> dict:
    """Fix the attributes transformers reads from modules/config; return per-layer widths."""
    arch = architecture(model)
    _, blocks = block_list(model, arch)
    widths = []
    for block, b in zip(blocks, attention_heads(model)):
        attn = b.attention
        if b.fused:
            attn.num_heads, attn.split_size = b.heads, b.heads * b.head_dim
        else:
            if hasattr(attn, "num_key_value_groups"):
                attn.num_key_value_groups = b.heads // b.kv_heads
            for attr in ("num_attention_heads", "num_heads"):
                if hasattr(attn, attr):
                    setattr(attn, attr, b.heads)
            if hasattr(attn, "all_head_size"):
                attn.all_head_size = b.heads * b.head_dim
        widths.append({"heads": b.heads, "kv_heads": b.kv_heads, "ffn": units(block.get_submodule(arch.ffn_down), "in")})
    _update_config(model, model.config, widths)
    return {"layers": widths}


def _update_config(model: nn.Module, config, widths: list[dict]) -> None:
    """Uniform widths fit the stock config, so plain ``from_pretrained`` reloads the model."""
    grouped_query = architecture(model).grouped_query_config
    if "head_dim" in config.to_dict() or grouped_query:
        config.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    uniform = {key: {w[key] for w in widths} for key in ("heads", "kv_heads", "ffn")}
    if len(uniform["ffn"]) == 1:
        ffn = uniform["ffn"].pop()
        for attr in ("intermediate_size", "n_inner"):
            if hasattr(config, attr):
                setattr(config, attr, ffn)
    if len(uniform["heads"]) == 1 and grouped_query:
        config.num_attention_heads = uniform["heads"].pop()
        config.num_key_value_heads = uniform["kv_heads"].pop()


def layer_widths(model: nn.Module) -> list[dict]:
    """Per layer: query heads, head_dim (for counting attention work)."""
    return [{"heads": b.heads, "head_dim": b.head_dim} for b in attention_heads(model)]
