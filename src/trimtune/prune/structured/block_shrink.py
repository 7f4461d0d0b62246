"""Shrink one decoder block's width from its recorded calibration calls: first its heads (scored on
o_proj's input), then its FFN channels (scored on down_proj's input, after the heads are gone, so
the FFN is judged on what the shrunk attention feeds it). Each step repairs the reading projection
before cutting it."""

from __future__ import annotations

import torch

from ..sequential.capture import BlockCalls
from .config import StructuredConfig
from .importance import choose_heads, column_scores, keep_top, per_unit, removed_count, row_scores
from .parts import BlockParts, canonical_weight, head_channels
from .repair import ensure_bias, repair_reader
from .stats import ChannelStats, collect


def _hidden_width(parts: BlockParts) -> int:
    return canonical_weight(parts.readers()[0]).shape[1]


def _head_scores(parts: BlockParts, config: StructuredConfig, o_stats: ChannelStats, in_stats: ChannelStats | None):
    hd = parts.head_dim
    kv = torch.zeros(parts.kv_heads)
    if config.importance == "activation":
        return o_stats.mean_head_norm, kv
    q = per_unit(column_scores(config.importance, o_stats, [canonical_weight(parts.o)]), hd)
    if config.importance == "wanda":
        q = q + per_unit(row_scores(canonical_weight(parts.q), in_stats), hd)
        kv = per_unit(row_scores(canonical_weight(parts.k), in_stats) + row_scores(canonical_weight(parts.v), in_stats), hd)
    return q, kv


def shrink_heads(parts: BlockParts, calls: BlockCalls, config: StructuredConfig) -> dict:
    o_stats = ChannelStats(parts.q_heads * parts.head_dim, parts.head_dim, second_moment=config.repair == "lstsq")
    watched = {parts.o: o_stats}
    in_stats = None
    if config.importance == "wanda":
        in_stats = watched[parts.q] = ChannelStats(_hidden_width(parts))
    collect(watched, parts.block, calls)
    q_scores, kv_scores = _head_scores(parts, config, o_stats, in_stats)
    q_keep, kv_keep = choose_heads(q_scores, kv_scores, config.heads, config.gqa)
    if config.repair == "bias":
        for module in (parts.q, parts.k, parts.v):
            ensure_bias(module)  # the config's attention_bias gives q, k, v and o a bias together
    repair_reader(parts.o, head_channels(q_keep, parts.head_dim), o_stats, config.repair, config.percdamp)
    removed_q = sorted(set(range(parts.q_heads)) - set(q_keep))
    removed_kv = sorted(set(range(parts.kv_heads)) - set(kv_keep))
    parts.keep_heads(q_keep, kv_keep)
    return {"heads_removed": removed_q, "kv_heads_removed": removed_kv}


def shrink_ffn(parts: BlockParts, calls: BlockCalls, config: StructuredConfig) -> dict:
    width = parts.ffn_width
    down_stats = ChannelStats(width, second_moment=config.repair == "lstsq")
    watched = {parts.down: down_stats}
    in_stats = None
    if config.importance == "wanda":
        in_stats = watched[parts.ups[0]] = ChannelStats(_hidden_width(parts))
    collect(watched, parts.block, calls)
    scores = column_scores(config.importance, down_stats, [canonical_weight(parts.down)])
    if config.importance == "wanda":
        scores = scores + sum(row_scores(canonical_weight(up), in_stats) for up in parts.ups)
    keep = keep_top(scores, removed_count(config.ffn, width, "ffn", config.round_to))
    if config.repair == "bias":
        for up in parts.ups:
            ensure_bias(up)  # the config's mlp_bias gives every FFN projection a bias together
    keep_index = torch.as_tensor(keep, dtype=torch.long)
    repair_reader(parts.down, keep_index, down_stats, config.repair, config.percdamp)
    parts.keep_ffn(keep_index)
    return {"ffn_removed": sorted(set(range(width)) - set(keep))}


def shrink_block(parts: BlockParts, calls: BlockCalls, config: StructuredConfig) -> dict:
    change = {}
    if config.heads:
        change.update(shrink_heads(parts, calls, config))
    if config.ffn:
        change.update(shrink_ffn(parts, calls, config))
    return change
