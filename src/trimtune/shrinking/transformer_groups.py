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

from ..core.architectures import architecture_of, block_list, head_dim
from ..core.layer_kinds import kind_class_for
from ..core.tuned_layer import TunedLayer
from .graph import Group, IndexMap, Member


def _layout(model: nn.Module) -> dict:
    """The block layout of the model's type, from the architecture table."""
    arch = architecture_of(model)
    layout = dict(layers=arch.blocks, o=arch.o, up=arch.ffn_up, down=arch.ffn_down)
    layout.update(qkv=arch.qkv) if arch.qkv else layout.update(q=arch.q, k=arch.k, v=arch.v)
    return layout


def supports(model: nn.Module) -> bool:
    arch = architecture_of(model)
    return arch is not None and arch.has_blocks


def _layers_prefix(model: nn.Module, layout: dict) -> tuple[str, nn.ModuleList]:
    return block_list(model)


def _width(module: nn.Module, dim: str) -> int:
    shell = module.base_layer if isinstance(module, TunedLayer) else module
    out_features, in_features = kind_class_for(shell)(shell).weight_shape(module.weight)
    return out_features if dim == "out" else in_features


def head_groups(model: nn.Module, gqa_mode: str = "kv") -> list[Group]:
    layout = _layout(model)
    prefix, blocks = _layers_prefix(model, layout)
    groups = []
    for i, block in enumerate(blocks):
        p = f"{prefix}.{i}."
        if "qkv" in layout:  # GPT-2: q, k, v fused in one Conv1D, each a third of its outputs
            heads = getattr(block.attn, "num_heads")
            hd = block.attn.head_dim
            members = [Member(p + layout["qkv"], "out", IndexMap().then(offset=k * heads, expand=hd)) for k in range(3)]
            members.append(Member(p + layout["o"], "in", IndexMap().then(expand=hd)))
            groups.append(Group(members, size=heads, unit=hd, name=f"{p}heads"))
            continue
        attn = block.get_submodule(layout["q"].rsplit(".", 1)[0])
        hd = head_dim(attn)
        q_heads = _width(block.get_submodule(layout["q"]), "out") // hd
        kv_heads = _width(block.get_submodule(layout["k"]), "out") // hd
        rep = q_heads // kv_heads
        if rep == 1 or gqa_mode == "kv":  # a kv head and its query heads go together
            qmap, kvmap = IndexMap().then(expand=rep * hd), IndexMap().then(expand=hd)
            members = [Member(p + layout["q"], "out", qmap), Member(p + layout["k"], "out", kvmap),
                       Member(p + layout["v"], "out", kvmap), Member(p + layout["o"], "in", qmap)]
            groups.append(Group(members, size=kv_heads, unit=hd, name=f"{p}heads"))
        else:  # query heads within each kv group; every group keeps the same count
            for j in range(kv_heads):
                qmap = IndexMap().then(offset=j * rep, expand=hd)
                members = [Member(p + layout["q"], "out", qmap), Member(p + layout["o"], "in", qmap)]
                groups.append(Group(members, size=rep, unit=hd, name=f"{p}kv{j}.query_heads"))
    return groups


def ffn_groups(model: nn.Module) -> list[Group]:
    layout = _layout(model)
    prefix, blocks = _layers_prefix(model, layout)
    groups = []
    for i, block in enumerate(blocks):
        p = f"{prefix}.{i}."
        size = _width(block.get_submodule(layout["down"]), "in")
        members = [Member(p + up, "out") for up in layout["up"]] + [Member(p + layout["down"], "in")]
        groups.append(Group(members, size=size, name=f"{p}ffn"))
    return groups


def after_shrink(model: nn.Module) -> dict:
    """Fix the attributes transformers reads from modules/config; return per-layer widths."""
    config = model.config
    layout = _layout(model)
    _, blocks = _layers_prefix(model, layout)
    widths = []
    for block in blocks:
        if "qkv" in layout:
            attn = block.attn
            heads = _width(block.get_submodule(layout["o"]), "in") // attn.head_dim
            attn.num_heads, attn.split_size = heads, heads * attn.head_dim
            kv_heads = heads
        else:
            attn = block.get_submodule(layout["q"].rsplit(".", 1)[0])
            hd = head_dim(attn)
            heads = _width(block.get_submodule(layout["q"]), "out") // hd
            kv_heads = _width(block.get_submodule(layout["k"]), "out") // hd
            if hasattr(attn, "num_key_value_groups"):
                attn.num_key_value_groups = heads // kv_heads
            for attr in ("num_attention_heads", "num_heads"):
                if hasattr(attn, attr):
                    setattr(attn, attr, heads)
            if hasattr(attn, "all_head_size"):
                attn.all_head_size = heads * hd
        widths.append({"heads": heads, "kv_heads": kv_heads, "ffn": _width(block.get_submodule(layout["down"]), "in")})
    _update_config(model, config, widths)
    return {"layers": widths}


def _update_config(model: nn.Module, config, widths: list[dict]) -> None:
    """Uniform widths fit the stock config, so plain ``from_pretrained`` reloads the model."""
    grouped_query = architecture_of(model).grouped_query_config
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
    layout = _layout(model)
    _, blocks = _layers_prefix(model, layout)
    widths = []
    for block in blocks:
        if "qkv" in layout:
            hd = block.attn.head_dim
            heads = _width(block.get_submodule(layout["o"]), "in") // hd
        else:
            attn = block.get_submodule(layout["q"].rsplit(".", 1)[0])
            hd = head_dim(attn)
            heads = _width(block.get_submodule(layout["q"]), "out") // hd
        widths.append({"heads": heads, "head_dim": hd})
    return widths
