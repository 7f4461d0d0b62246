"""The block walk for a structured shrink, in memory or (through a ``BlockSource``) from disk.

1. A dense pass, only when hidden channels or whole blocks go (both are one choice for the whole
   model): every block runs unpruned on the calibration calls while the inputs of its norms'
   readers are measured (hidden-channel scores, summed over blocks) and its effect on the hidden
   state is scored (depth).
2. The shrink pass: block 0's inputs are captured again (cut to the kept hidden channels); each kept
   block is loaded, cut to the kept hidden channels, its heads and FFN channels scored, repaired and
   cut (``block_shrink``), and rerun to make the next block's inputs, so every block is judged on
   what the shrunk model before it computes. Removed blocks are never loaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ...core.slicing import slice_module
from ..sequential.capture import BlockCalls, block_output, capture, run_block
from ..sequential.layouts import BlockLayout, blocks_of, layout_of
from ..sequential.pipeline import BlockSource, calibration_batches
from .block_shrink import shrink_block
from .config import StructuredConfig
from .depth import DepthScores
from .importance import column_scores, keep_top, removed_count
from .parts import BlockParts, canonical_weight, keep_norm_channels, parts_of
from .plan import check_plan, shrunk_config
from .report import StructuredReport
from .stats import ChannelStats, observing


def _captured(model: nn.Module, blocks: nn.ModuleList, calibration, source: BlockSource) -> BlockCalls:
    source.before_capture(model)
    try:
        return capture(model, blocks[0], calibration)
    finally:
        source.after_capture(model)


def _steps(indices, progress: str | None):
    return tqdm(indices, desc=progress, unit="block") if progress else indices


@torch.no_grad()
def dense_pass(model, calibration, config: StructuredConfig, layout: BlockLayout, source: BlockSource, progress=None):
    """(hidden scores or None, DepthScores) from the unpruned model."""
    blocks = blocks_of(model, layout)
    calls = _captured(model, blocks, calibration, source)
    depth = DepthScores()
    hidden = None
    for i in _steps(range(len(blocks)), progress):
        block = blocks[i]
        source.load(i, block)
        parts = parts_of(block, layout.model_type)
        width = canonical_weight(parts.readers()[0]).shape[1]
        attn_in, ffn_in = ChannelStats(width), ChannelStats(width)
        watched = {parts.readers()[0]: attn_in, parts.ups[0]: ffn_in} if config.hidden else {}
        depth.start_block()
        with observing(watched):
            for call in calls:
                out = block_output(block(**call))
                depth.add_call(call[calls.hidden], out)
                call[calls.hidden] = out
        depth.end_block()
        if config.hidden:
            attn_readers = [canonical_weight(m) for m in parts.readers()[:-len(parts.ups)]]
            scores = column_scores(config.importance, attn_in, attn_readers)
            scores = scores + column_scores(config.importance, ffn_in, [canonical_weight(m) for m in parts.ups])
            hidden = scores if hidden is None else hidden + scores
        source.release(i, block)
    return hidden, depth


def block_widths(parts: BlockParts) -> dict:
    return {"q_heads": parts.q_heads, "kv_heads": parts.kv_heads, "head_dim": parts.head_dim, "ffn": parts.ffn_width,
            "hidden": canonical_weight(parts.o).shape[0]}


@torch.no_grad()
def shrink_pass(model, calibration, config: StructuredConfig, layout: BlockLayout, hidden_keep: torch.Tensor | None,
                dropped: list[int], source: BlockSource, progress=None, on_block=None) -> tuple[list[dict], dict]:
    """Per kept block: the change record; and the widths every kept block ends with."""
    blocks = blocks_of(model, layout)
    calls = _captured(model, blocks, calibration, source)
    if hidden_keep is not None:
        for call in calls:
            call[calls.hidden] = call[calls.hidden].index_select(-1, hidden_keep)
    kept = [i for i in range(len(blocks)) if i not in dropped]
    changes, widths = [], {}
    for new_index, i in enumerate(_steps(kept, progress)):
        block = blocks[i]
        source.load(i, block)
        parts = parts_of(block, layout.model_type)
        if hidden_keep is not None:
            parts.keep_hidden(hidden_keep)
        changes.append({"block": i, "new_index": new_index, **shrink_block(parts, calls, config)})
        widths = block_widths(parts)
        if new_index + 1 < len(kept):
            run_block(block, calls)
        if on_block is not None:
            on_block(new_index, i, block)
        source.release(i, block)
    return changes, widths


def choose_model_wide(model, calibration, config, layout, source, progress) -> tuple[torch.Tensor | None, list[int], dict]:
    """Hidden channels to keep and blocks to remove, from the dense pass (or nothing to choose)."""
    if not config.needs_dense_pass:
        return None, [], {}
    scores, depth = dense_pass(model, calibration, config, layout, source, f"{progress} (dense pass)" if progress else None)
    hidden_keep = None
    if config.hidden:
        hidden_keep = torch.as_tensor(keep_top(scores, removed_count(config.hidden, len(scores), "hidden", config.round_to)), dtype=torch.long)
    dropped = depth.choose(config.depth_metric, config.drop_layers)
    return hidden_keep, dropped, {"block_influence": depth.influence}


def plan_and_shrink(model, samples, config: StructuredConfig, source: BlockSource | None = None, progress: str | None = None,
                    on_block: Callable | None = None):
    """Check, choose what goes model-wide, then shrink block by block. Returns (report, new config,
    hidden_keep, kept block indices); ``model``'s blocks are cut in place (removed ones untouched)."""
    source = source or BlockSource()
    check_plan(model.config, config)
    layout = layout_of(model)
    calibration = calibration_batches(samples, model, config.batch_tokens)
    model.eval()
    hidden_keep, dropped, scores = choose_model_wide(model, calibration, config, layout, source, progress)
    changes, widths = shrink_pass(model, calibration, config, layout, hidden_keep, dropped, source, progress, on_block)
    kept = [c["block"] for c in changes]
    new_config = shrunk_config(model.config, widths, kept, config)
    report = StructuredReport.build(config, model.config, new_config, changes, dropped, hidden_keep, scores)
    return report, new_config, hidden_keep, kept


def _finish_in_memory(model: nn.Module, layout: BlockLayout, new_config, hidden_keep, kept: list[int]) -> None:
    """Remove the dropped blocks, renumber the rest, cut embeddings / final norm / head to the kept
    hidden channels and put the new config on the model."""
    blocks = blocks_of(model, layout)
    remaining = nn.ModuleList([blocks[i] for i in kept])
    for new_index, block in enumerate(remaining):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index  # the attention cache is indexed by it
    parent, _, name = layout.blocks.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, remaining)
    if hidden_keep is not None:
        _cut_outer_hidden(model, layout, hidden_keep)
    model.config = new_config
    for module in model.modules():
        if module is not model and getattr(module, "config", None) is not None and hasattr(module.config, "model_type"):
            module.config = new_config


def _cut_outer_hidden(model: nn.Module, layout: BlockLayout, keep: torch.Tensor) -> None:
    embeddings = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embeddings.weight
    slice_module(embeddings, "out", keep)
    if layout.norm:
        keep_norm_channels(model.get_submodule(layout.norm), keep)
    if head is not None:
        if tied:
            head.weight = embeddings.weight
            head.in_features = len(keep)
        else:
            slice_module(head, "in", keep)


def shrink_llm(model: nn.Module, samples, config: StructuredConfig, progress: str | None = None) -> StructuredReport:
    """Make ``model`` (a decoder LM of the architecture table, in memory) physically smaller: fewer
    heads, FFN channels, hidden channels and blocks, chosen from calibration ``samples`` (any form
    ``prune_sequential`` takes: a (n, seqlen) tensor, variable-length samples, padded batches) and repaired
    (``StructuredConfig``). Its config then describes the new shapes, so ``save_pretrained`` writes
    a directory any transformers install loads. Returns the report."""
    report, new_config, hidden_keep, kept = plan_and_shrink(model, samples, config, progress=progress)
    _finish_in_memory(model, layout_of(model), new_config, hidden_keep, kept)
    return report
