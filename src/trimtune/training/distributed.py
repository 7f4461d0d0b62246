"""Data-parallel training on torch.distributed, as launched by ``torchrun`` or ``accelerate launch``.

Nothing here distributes by itself: the launcher starts one process per device and sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; ``init_distributed`` joins the process group (gloo on
CPU, nccl on GPU); ``distributed_model`` wraps the model in torch's ``DistributedDataParallel``;
``distributed_loader`` gives each rank its share of every global batch through a
``DistributedSampler``. Then ``train`` runs unchanged.

Why DDP over the adapted model: it broadcasts rank 0's parameters and buffers when it wraps the
model (every rank starts from the same adapter, masks and diffs) and all-reduces, in buckets
overlapped with backward, only the gradients of parameters that require grad, so a frozen base
costs no communication. Buffers (masks) are re-broadcast from rank 0 before each forward, so masks
stay identical across ranks; masks changed by pruning callbacks are computed from identical
weights on every rank, so they agree as well. Checkpoints are written by rank 0 only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from .fsdp import shard_model


@dataclass(frozen=True)
class DistributedInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(backend: str | None = None) -> DistributedInfo:
    """Join the process group the launcher described in the environment (idempotent).

    Without a launcher (no WORLD_SIZE in the environment) this is a single process: rank 0 of 1,
    and no process group is created. ``backend`` defaults to nccl with CUDA, gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if "RANK" not in os.environ:
            raise RuntimeError("WORLD_SIZE is set but RANK is not: start the processes with torchrun or accelerate launch")
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return DistributedInfo(rank(), world_size if dist.is_initialized() else 1, local_rank, device)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def distributed_model(model: nn.Module, info: DistributedInfo) -> nn.Module:
    """``model`` on its device, wrapped in DistributedDataParallel when there are several processes."""
    model.to(info.device)
    if info.world_size == 1:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


STRATEGIES = ("ddp", "fsdp")


def parallel_model(model: nn.Module, info: DistributedInfo, strategy: str = "ddp", block_classes=None, layer_units: bool = False) -> nn.Module:
    """``model`` ready for training on ``info.world_size`` processes: "ddp" wraps it in
    DistributedDataParallel (a full copy per process), "fsdp" shards it in place with FSDP2
    (``fsdp.shard_model``: each process holds 1/N of every parameter; ``layer_units``: a unit per
    wrapped layer too). One process: unchanged."""
    if strategy not in STRATEGIES:
        raise ValueError(f"distributed strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "ddp" or info.world_size == 1:
        return distributed_model(model, info)
    if not any(p.is_meta for p in model.parameters()):  # a meta model gets its memory after sharding (to_empty)
        model.to(info.device)
    return shard_model(model, block_classes, layer_units=layer_units)


def distributed_loader(dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False, **loader_kwargs) -> DataLoader:
    """A DataLoader over this rank's share: ``batch_size`` is per process, so the global batch is
    ``batch_size * world_size``. Shuffling is seeded (``seed + epoch``, the loop calls
    ``set_epoch``), so every rank and every resumed run draws the same permutation."""
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **loader_kwargs)


def mean_over_ranks(value: float) -> float:
    """The mean of ``value`` over all processes (the loss of the global batch when every rank's
    share has the same size); ``value`` itself without a process group."""
    return sum_over_ranks(value) / world_size()


def sum_over_ranks(value: float) -> float:
    """The sum of ``value`` over all processes; ``value`` itself without a process group."""
    if world_size() == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total.item())


def world_size() -> int:
    """How many processes train together (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (state-dict keys without ``module.``); an
    FSDP-sharded model is its own module (FSDP2 shards in place)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
