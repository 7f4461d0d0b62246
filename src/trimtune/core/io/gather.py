"""Whole tensors out of a sharded model, and one writer per file.

Under FSDP2 (``trimtune.training.fsdp``) every parameter is a DTensor holding one rank's slice. A file
written from the local slices holds 1/N of each adapter tensor — accelerate #4206: resuming from
such a file silently resets (N-1)/N of the adapter. Savers therefore gather every tensor whole
(``full_tensor()``, a collective: every rank calls the saver) and let rank 0 alone write, after
which all ranks wait so the file exists everywhere when ``save_*`` returns (``write_once``).
Unsharded tensors need no collective: a saver called by rank 0 alone (the DDP habit) still works.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def full(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` complete, keeping the autograd graph: a DTensor is gathered from all ranks
    (collective). Used for loss terms over sharded parameters (AdaLoRA's orthogonality, diff's
    penalty): every rank computes the same term and its gradient flows back into each rank's own
    slice, where FSDP adds the reduce-scattered task gradient, so the sum is the 1-process gradient."""
    return tensor.full_tensor() if is_sharded_tensor(tensor) else tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` complete and detached: a DTensor is gathered from all ranks (collective)."""
    return full(tensor.detach())


def gathered(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of ``tensors`` whole, in a fixed (sorted) order so all ranks gather in step."""
    return {key: whole(tensors[key]) for key in sorted(tensors)}


def model_is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are DTensors (sharded with FSDP)."""
    return any(is_sharded_tensor(p) for p in model.parameters())


def write_once(model: nn.Module, tensors: dict[str, torch.Tensor], write) -> None:
    """``write(whole_tensors)`` once: on a sharded model every rank gathers, rank 0 writes and the
    others wait for it; otherwise the calling process writes (no collective)."""
    sharded = model_is_sharded(model)
    whole_tensors = gathered(tensors)
    if not sharded or writes_files():
        write(whole_tensors)
    if sharded:
        wait_for_writer()


@contextlib.contextmanager
def unsharded(model: nn.Module, module_name: str):
    """Within the block, the FSDP unit that owns ``module_name`` holds its parameters whole (plain
    tensors) on every rank (collective: all ranks enter); nothing happens on an unsharded model.
    One unit at a time, so reading a layer never needs the whole model in one process."""
    units = [(n, m) for n, m in model.named_modules() if _is_fsdp_module(m)]
    owners = [(n, m) for n, m in units if n == "" or module_name == n or module_name.startswith(n + ".")]
    if not owners:
        yield
        return
    unit = max(owners, key=lambda item: len(item[0]))[1]
    unit.unshard()
    try:
        yield
    finally:
        unit.reshard()


def writes_files() -> bool:
    """Whether this process writes shared files: rank 0, or the only process."""
    return not _distributed() or dist.get_rank() == 0


def wait_for_writer() -> None:
    """Every rank waits until rank 0 has written (a barrier); nothing without a process group."""
    if _distributed():
        dist.barrier()


def model_class(module: nn.Module) -> type:
    """The module's own class: FSDP2 swaps in a subclass ``FSDP<Name>(FSDPModule, <Name>)``."""
    cls = type(module)
    bases = [b for b in cls.__bases__ if b.__name__ != "FSDPModule"]
    return bases[0] if len(bases) < len(cls.__bases__) and bases else cls


def _is_fsdp_module(module: nn.Module) -> bool:
    return any(base.__name__ == "FSDPModule" for base in type(module).__mro__)


def is_sharded_tensor(tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a parameter of an FSDP-sharded model)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(tensor, DTensor)
