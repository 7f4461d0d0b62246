"""A structured shrink from one safetensors model directory to a new one, one block in memory at a
time (the model is built on the meta device, as ``prune.sequential.stream`` does for pruning).

Blocks are read from the memory-mapped shards, cut, repaired and written under their new numbers;
removed blocks are never read. Tensors outside the blocks are copied byte for byte, or, when hidden
channels go, read one group at a time and cut (embeddings, final norm, an untied head). The output
is a plain Hugging Face directory: shards, index, the input's other files, a ``config.json`` with the
new shapes, ``shrink_report.json`` and ``pruned_from.json`` (the dense directory: a recovery run's
teacher). It is built beside ``out`` and renamed into place when complete.
"""

from __future__ import annotations

import json
from pathlib import Path


from ...core.io import atomic
from ..sequential.layouts import layout_of
from ..sequential.pipeline import check_samples
from ..sequential.stream import (
    SOURCE_FILE,
    Checkpoint,
    DiskBlocks,
    ShardWriter,
    check_out,
    copy_other_files,
    empty_model,
    folded_state,
    group_by_size,
    map_large_buffers,
)
from .config import StructuredConfig
from .pipeline import plan_and_shrink
from .plan import check_plan
from .report import StructuredReport

REPORT = "shrink_report.json"


def _hidden_axis(key: str, layout, head: str | None) -> int | None:
    """Which axis of a non-block tensor holds hidden channels (None: it has none)."""
    if any(key.startswith(f"{path}.") for path in layout.embed):
        return -1  # (vocab or positions, hidden)
    if layout.norm and key.startswith(f"{layout.norm}."):
        return 0
    if head and key == f"{head}.weight":
        return 1  # (vocab, hidden)
    return None


def _output_head_name(model) -> str | None:
    head = model.get_output_embeddings()
    return next((name for name, module in model.named_modules() if module is head), None) if head is not None else None


def _write_outer(writer: ShardWriter, checkpoint: Checkpoint, groups, slices, hidden_keep, layout, head) -> None:
    for group in groups:
        if hidden_keep is None:
            writer.write({k: slices[k] for k in group})  # unchanged: byte for byte, never loaded
            continue
        tensors = checkpoint.read(group)
        for key, tensor in tensors.items():
            axis = _hidden_axis(key, layout, head)
            if axis is not None:
                tensors[key] = tensor.index_select(axis, hidden_keep).contiguous()
        writer.write(tensors)


def shrink_llm_directory(model_dir, out, samples, config: StructuredConfig, progress: str | None = None,
                         max_shard_bytes: int = 1 << 28) -> StructuredReport:
    """Shrink the causal LM in ``model_dir`` (safetensors) into the new directory ``out``, streaming
    one block at a time. Everything is checked before any weight is read; a failure leaves no output.
    ``samples``: token ids, or a function returning them, called once the output and the plan are
    checked (making calibration, e.g. generating with the whole model, can take minutes)."""
    model_dir, out = Path(model_dir), Path(out)
    check_out(out, model_dir)
    map_large_buffers()
    checkpoint = Checkpoint(model_dir)
    model = empty_model(model_dir)
    check_plan(model.config, config)
    samples = samples() if callable(samples) else samples
    check_samples(samples, model)
    layout = layout_of(model)
    head = _output_head_name(model)
    rest = [k for k in checkpoint.shard_of if not k.startswith(f"{layout.blocks}.")]
    slices = checkpoint.slices()
    groups = group_by_size(rest, slices, max_shard_bytes)
    kept_count = len(model.get_submodule(layout.blocks)) - config.drop_layers
    with atomic.atomic_directory(out) as tmp:
        writer = ShardWriter(tmp, len(groups) + kept_count)

        def save(new_index, index, block):
            writer.write({f"{layout.blocks}.{new_index}.{k}": v for k, v in folded_state(block).items()})

        report, new_config, hidden_keep, _ = plan_and_shrink(model, samples, config, DiskBlocks(checkpoint, layout), progress, save)
        _write_outer(writer, checkpoint, groups, slices, hidden_keep, layout, head)
        writer.finish()
        report.file_bytes = {"before": sum(s.length for s in slices.values()), "after": writer.size}
        copy_other_files(model_dir, tmp)
        atomic.write_bytes(tmp / "config.json", new_config.to_json_string(use_diff=True).encode())
        atomic.write_bytes(tmp / REPORT, (report.to_json() + "\n").encode())
        atomic.write_bytes(tmp / SOURCE_FILE, (json.dumps({"source": str(model_dir.resolve())}) + "\n").encode())
    return report
