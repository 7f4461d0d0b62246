"""The sequential pipeline (as in the SparseGPT and Wanda reference codes): capture block 0's inputs,
then for each block in order collect its statistics, prune it, and rerun the *pruned* block to make
the next block's inputs, so later blocks are calibrated on what the pruned model actually computes.

Memory is one block plus the calibration activations, whatever the depth, provided the blocks come
and go: ``walk`` takes a ``BlockSource`` whose ``load``/``release`` the streaming loader implements
(in memory both do nothing).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from tqdm.auto import tqdm

from ...core.layer_kinds import kind_class_for
from ...core.tuned_layer import TunedLayer
from ..owl import owl_sparsities
from ..sparsity_report import LayerSparsity, SparsityReport, sparsity_report
from .block import block_outlier_ratio, linear_names, prune_block
from .capture import BlockCalls, capture, run_block
from .config import SequentialConfig
from .layouts import BlockLayout, blocks_of, layout_of
from .samples import Batch, as_samples, batches


class BlockSource:
    """In memory: every block is already there and stays."""

    def before_capture(self, model: nn.Module) -> None:
        pass

    def after_capture(self, model: nn.Module) -> None:
        pass

    def load(self, index: int, block: nn.Module) -> None:
        pass

    def release(self, index: int, block: nn.Module) -> None:
        pass


def calibration_batches(samples, model: nn.Module, batch_tokens: int) -> list[Batch]:
    """The capture batches of ``samples`` (any form ``samples.as_samples`` takes), checked against the
    model's positions: everything is refused here, before a block is touched or a file written."""
    rows = as_samples(samples)
    longest = max(range(len(rows)), key=lambda i: len(rows[i]))
    check_seqlen(model.config, len(rows[longest]), f"calibration sample {longest} has {len(rows[longest])} tokens: ")
    return batches(rows, batch_tokens)


def check_samples(samples, model: nn.Module) -> None:
    calibration_batches(samples, model, 1)


def check_seqlen(config, seqlen: int, what: str = "") -> None:
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and seqlen > limit:
        raise ValueError(f"{what}seqlen {seqlen} is longer than the model's {limit} positions (config max_position_embeddings); "
                         f"use samples of at most {limit} tokens")


def check_widths(model: nn.Module, layout: BlockLayout, config: SequentialConfig) -> None:
    """N:M needs every layer's input width to be a multiple of M: check all before pruning any."""
    if not config.nm:
        return
    n, m = config.nm
    for i, block in enumerate(blocks_of(model, layout)):
        for name in linear_names(block):
            module = block.get_submodule(name)
            base = module.base_layer if isinstance(module, TunedLayer) else module
            columns = module.weight.shape[kind_class_for(base).in_dim]
            if columns % m:
                raise ValueError(f"{layout.block_name(i)}.{name}: input width {columns} is not a multiple of M={m} for {n}:{m} sparsity")


def walk(model: nn.Module, calibration: list[Batch] | None, visit: Callable[[int, nn.Module, BlockCalls | None], None],
         source: BlockSource | None = None, progress: str | None = None, forward: bool = True) -> None:
    """Capture block 0's inputs, then per block: load, ``visit``, rerun to make the next inputs, release.
    ``forward=False`` (magnitude needs no activations): nothing is captured or run, ``visit`` gets
    ``None`` for the calls; the blocks still come and go one at a time, so memory stays bounded."""
    source = source or BlockSource()
    layout = layout_of(model)
    blocks = blocks_of(model, layout)
    calls = None
    if forward:
        source.before_capture(model)
        calls = capture(model, blocks[0], calibration)
        source.after_capture(model)
    indices = range(len(blocks))
    if progress:
        indices = tqdm(indices, desc=progress, unit="block")
    for i in indices:
        block = blocks[i]
        source.load(i, block)
        visit(i, block, calls)
        if forward and i + 1 < len(blocks):
            run_block(block, calls)
        source.release(i, block)


def owl_block_sparsities(model, calibration, config, source=None, progress=None) -> list[float]:
    """OWL's dense pass: every block's outlier ratio on unpruned activations, turned into sparsities."""
    ratios: list[float] = []
    walk(model, calibration, lambda i, block, calls: ratios.append(block_outlier_ratio(block, calls, config.owl_m)),
         source, f"{progress} (OWL ratios)" if progress else None)
    return owl_sparsities(ratios, float(config.sparsity), config.owl_lambda)


def block_report(block: nn.Module, prefix: str) -> list[LayerSparsity]:
    rows = sparsity_report(block).layers
    for row in rows:
        row.name = f"{prefix}.{row.name}"
    return rows


def prune_sequential(model: nn.Module, samples, config: SequentialConfig,
                     source: BlockSource | None = None, progress: str | None = None,
                     on_block: Callable[[int, nn.Module], None] | None = None) -> SparsityReport:
    """Prune ``model``'s blocks in order on calibration ``samples``: a LongTensor (nsamples, seqlen), a
    list of 1-D LongTensors of any lengths, or padded batches (dicts with input_ids and attention_mask);
    see ``samples.py``. They run ``config.batch_tokens`` tokens per forward; padding enters no statistic.
    Magnitude reads none, so they may be None there and no forward pass is run.
    In memory the layers keep trimtune masks (``make_permanent`` folds them). ``on_block(i, block)``
    runs after block i is pruned (the streaming writer saves it there). Returns the sparsity report."""
    layout = layout_of(model)
    calibration = calibration_batches(samples, model, config.batch_tokens) if config.needs_calibration else None
    check_widths(model, layout, config)
    model.eval()
    sparsities = owl_block_sparsities(model, calibration, config, source, progress) if config.owl else None
    rows: list[LayerSparsity] = []

    def visit(i, block, calls):
        sparsity = sparsities[i] if sparsities else (None if config.nm else float(config.sparsity))
        prune_block(block, calls, config, sparsity, f"{layout.block_name(i)}.")
        rows.extend(block_report(block, layout.block_name(i)))
        if on_block is not None:
            on_block(i, block)

    walk(model, calibration, visit, source, progress, forward=config.needs_calibration)
    return SparsityReport(rows)
