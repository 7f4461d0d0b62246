"""Prune a Hugging Face model directory without ever holding the model: one block in memory at a time.

The model is built on the meta device (parameters without storage). Only the modules before block 0
(the embeddings) are made real, to capture block 0's calibration inputs; then each block's tensors are
read from the memory-mapped safetensors shards, the block is pruned, written to its own output shard
and returned to the meta device. Peak memory is one block, the embeddings and the calibration
activations, whatever the depth.

The output is built in a temporary directory beside the target and renamed into place only when
complete (``io.atomic.atomic_directory``): a failure (disk full, bad input) leaves no output at all.
It holds sharded safetensors with ``model.safetensors.index.json``, the input's other files (config,
tokenizer), ``sparsity_report.json`` and ``pruned_from.json`` (the source directory, which a later
``trimtune tune`` with a ``distill`` section takes as its teacher).
"""

from __future__ import annotations

import ctypes
import errno
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ...core.io import atomic
from ...core.io.safetensors_files import check_model_files
from ...core.io.safetensors_stream import FileSlice, slices_of
from ...core.io.safetensors_stream import write as write_shard
from ..sparsity_report import SparsityReport
from .config import SequentialConfig
from .layouts import blocks_of, layout_of, model_type_of
from .pipeline import BlockSource, check_samples, check_widths, prune_sequential

INDEX = "model.safetensors.index.json"
REPORT = "sparsity_report.json"
SOURCE_FILE = "pruned_from.json"  # the dense directory this one was pruned from: a recovery run's default teacher


class Checkpoint:
    """The tensors of a safetensors model directory: which shard holds each key."""

    def __init__(self, directory: Path):
        self.directory = directory
        check_model_files(directory)  # a damaged shard or a wrong index is named here, before any block
        index = directory / INDEX
        single = directory / "model.safetensors"
        if index.is_file():
            self.shard_of = dict(json.loads(index.read_text())["weight_map"])
        elif single.is_file():
            with safe_open(str(single), framework="pt") as f:
                self.shard_of = {k: "model.safetensors" for k in f.keys()}
        else:
            raise FileNotFoundError(f"{directory} has no model.safetensors or {INDEX}; only safetensors checkpoints can be streamed")

    def slices(self) -> dict:
        """Where every tensor's bytes are (from the shard headers; nothing is loaded)."""
        out = {}
        for shard in sorted(set(self.shard_of.values())):
            out.update(slices_of(self.directory / shard))
        return out

    def read(self, keys) -> dict[str, torch.Tensor]:
        """Copies of ``keys``, each shard memory-mapped only while it is read (so no mapping outlives the call)."""
        by_shard: dict[str, list[str]] = {}
        for key in keys:
            by_shard.setdefault(self.shard_of[key], []).append(key)
        out = {}
        for shard, names in by_shard.items():
            with safe_open(str(self.directory / shard), framework="pt") as f:
                for name in names:
                    out[name] = f.get_tensor(name)
        return out

    def under(self, prefix: str) -> list[str]:
        return [k for k in self.shard_of if k.startswith(prefix)]


def empty_model(directory: Path):
    """The model class named by config.json, built with every parameter on the meta device (buffers
    such as rotary frequencies are computed for real: they are not in the checkpoint)."""
    import transformers
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    model_type_of(config)  # an unknown layout fails here, before anything is read
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else _default_class(config)
    if cls is None:
        raise ValueError(f"{directory}/config.json names no known model class in `architectures` (got {names!r})")
    with init_empty_weights():
        model = cls._from_config(config)
    return model.eval()


def _default_class(config):
    """No `architectures` in config.json: the causal LM class for the type, else the bare model."""
    from transformers import AutoModel, AutoModelForCausalLM

    for auto in (AutoModelForCausalLM, AutoModel):
        try:
            return auto._model_mapping[type(config)]
        except KeyError:
            continue
    return None


def _load(module: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    missing, unexpected = module.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        raise KeyError(f"{where}: the checkpoint does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


@torch.no_grad()
def folded_state(block: nn.Module) -> dict[str, torch.Tensor]:
    """The block's tensors under their checkpoint names, trimtune masks folded into the weights *in
    place* and then dropped (W ⊙ M: the forward computes the same values, and no second copy of the
    block is made; without the mask the rerun that makes the next block's inputs no longer multiplies
    every weight by its mask in each of its forwards)."""
    state = {}
    for name, module in block.named_modules():
        mask = getattr(module, "weight_mask", None)
        if mask is not None:
            module.weight.mul_(mask)
            module.set_mask(None)
        for key, tensor in module.named_parameters(recurse=False):
            state[f"{name}.{key}" if name else key] = tensor.detach()
        for key, tensor in module.named_buffers(recurse=False):
            if key != "weight_mask" and tensor is not None and key not in module._non_persistent_buffers_set:
                state[f"{name}.{key}" if name else key] = tensor.detach()
    return state


class ShardWriter:
    """Writes numbered shards into the temporary output directory and the index at the end."""

    def __init__(self, directory: Path, total: int):
        self.directory, self.total = directory, total
        self.weight_map: dict[str, str] = {}
        self.size = 0
        self.count = 0

    def write(self, items: dict) -> None:
        """``items``: tensors (a pruned block) or ``FileSlice``s of the input (copied byte for byte)."""
        self.count += 1
        name = f"model-{self.count:05d}-of-{self.total:05d}.safetensors"
        try:
            with atomic.atomic_path(self.directory / name) as tmp:
                write_shard(tmp, items, metadata={"format": "pt"})
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"no space left on the device while writing shard {name}; no output was written") from err
            raise
        self.weight_map.update((k, name) for k in items)
        self.size += sum(v.length if isinstance(v, FileSlice) else v.numel() * v.element_size() for v in items.values())

    def finish(self) -> None:
        if self.count != self.total:
            raise RuntimeError(f"wrote {self.count} shards, planned {self.total}")
        atomic.write_json(self.directory / INDEX, {"metadata": {"total_size": self.size}, "weight_map": dict(sorted(self.weight_map.items()))})


def group_by_size(keys: list[str], slices: dict, limit: int) -> list[list[str]]:
    """Non-block tensors in shards of at most ``limit`` bytes (a bigger tensor gets its own)."""
    groups, current, size = [], [], 0
    for key in keys:
        nbytes = slices[key].length
        if current and size + nbytes > limit:
            groups.append(current)
            current, size = [], 0
        current.append(key)
        size += nbytes
    if current:
        groups.append(current)
    return groups


class DiskBlocks(BlockSource):
    """The embeddings are real only while block 0's inputs are captured. Block i is loaded from the
    checkpoint before it is visited; after, ``on_block`` has saved it and ``release`` puts it back on
    the meta device, so its memory is freed."""

    def __init__(self, checkpoint: Checkpoint, layout):
        self.checkpoint, self.layout, self.blocks_path = checkpoint, layout, layout.blocks

    def before_capture(self, model):
        for path in self.layout.embed:
            prefix = f"{path}."
            tensors = self.checkpoint.read(self.checkpoint.under(prefix))
            _load(model.get_submodule(path), {k[len(prefix):]: v for k, v in tensors.items()}, path)

    def after_capture(self, model):
        for path in self.layout.embed:
            model.get_submodule(path).to("meta")

    def load(self, index, block):
        prefix = f"{self.blocks_path}.{index}."
        tensors = self.checkpoint.read(self.checkpoint.under(prefix))
        _load(block, {k[len(prefix):]: v for k, v in tensors.items()}, f"block {prefix[:-1]}")

    def release(self, index, block):
        block.to("meta")
        _return_freed_memory()


def _glibc(name: str):
    """A glibc function (``malloc_trim``, ``mallopt``), or None elsewhere (other allocators return memory on their own)."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _glibc("malloc_trim")
_MALLOPT = _glibc("mallopt")
_M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h


def map_large_buffers() -> None:
    """Every buffer from 1 MiB up gets its own mapping, given back to the OS when freed. glibc serves
    smaller buffers than its mmap threshold from the heap, and raises that threshold (up to 32 MB)
    each time a mapped buffer is freed; a block's temporaries (scores, indices, masks: 1 to 46 MB)
    then stay resident as freed heap until the block is released. Measured on a 6-layer TinyLlama-width
    Wanda run: 120-290 MB per block above its weights and masks, whole-run peak 1054 MB; with this,
    none and 864 MB. mallopt cannot be undone: the fixed threshold stays for the rest of the process."""
    if _MALLOPT is not None:
        _MALLOPT(_M_MMAP_THRESHOLD, 1 << 20)


def _return_freed_memory() -> None:
    """Give the freed block back to the OS. Tensors under 32 MB live on glibc's heap, which keeps
    freed pages: without this the resident set grows by tens of MB per block (measured: 25-50 MB per
    44 MB block), so the peak would grow with depth."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def check_out(out: Path, model_dir: Path) -> None:
    """The output is a new directory, neither the input nor inside it."""
    if out.resolve() == model_dir.resolve() or model_dir.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out} is, or is inside, the input model directory {model_dir}; write the output elsewhere")
    if out.exists():
        raise FileExistsError(f"output directory {out} already exists; choose a new --out (nothing is overwritten)")


def prune_directory(model_dir, out, samples, config: SequentialConfig, progress: str | None = None,
                    max_shard_bytes: int = 1 << 28, on_block: Callable[[int], None] | None = None) -> SparsityReport:
    """Prune the safetensors model in ``model_dir`` block by block from disk into a new directory ``out``.
    ``on_block(i)`` is called once block i is written (benchmarks time blocks with it). On glibc it
    fixes the allocator's mmap threshold at 1 MiB for the process (``map_large_buffers``: why). ``samples``: any form
    ``prune_sequential`` takes (``samples.py``). Magnitude reads
    no ``samples`` (None is fine): it loads, prunes and writes each block without any forward pass."""
    model_dir, out = Path(model_dir), Path(out)
    check_out(out, model_dir)
    map_large_buffers()
    checkpoint = Checkpoint(model_dir)
    model = empty_model(model_dir)
    layout = layout_of(model)
    if config.needs_calibration:
        check_samples(samples, model)
    check_widths(model, layout, config)
    blocks = blocks_of(model, layout)
    block_keys = {k for k in checkpoint.shard_of if k.startswith(f"{layout.blocks}.")}
    rest = [k for k in checkpoint.shard_of if k not in block_keys]
    slices = checkpoint.slices()
    groups = group_by_size(rest, slices, max_shard_bytes)
    with atomic.atomic_directory(out) as tmp:
        writer = ShardWriter(tmp, len(groups) + len(blocks))
        for group in groups:  # embeddings, final norm, head: copied byte for byte, never loaded
            writer.write({k: slices[k] for k in group})
        def save(i, block):
            tensors = {f"{layout.block_name(i)}.{k}": v for k, v in folded_state(block).items()}
            expected = set(checkpoint.under(f"{layout.block_name(i)}."))
            if set(tensors) != expected:
                raise KeyError(f"block {i}: would write {sorted(set(tensors) ^ expected)[:5]} unlike the input checkpoint")
            writer.write(tensors)
            if on_block is not None:
                on_block(i)

        report = prune_sequential(model, samples, config, DiskBlocks(checkpoint, layout), progress, on_block=save)
        writer.finish()
        copy_other_files(model_dir, tmp)
        atomic.write_bytes(tmp / REPORT, (report.to_json() + "\n").encode())
        atomic.write_bytes(tmp / SOURCE_FILE, (json.dumps({"source": str(model_dir.resolve())}) + "\n").encode())
    return report


def copy_other_files(source: Path, target: Path) -> None:
    """config.json, generation_config.json, tokenizer files: everything but the weights."""
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors") and path.name not in (INDEX, REPORT, SOURCE_FILE):
            shutil.copy2(path, target / path.name)
