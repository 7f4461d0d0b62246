"""The random number generators a training step draws from: python, numpy, torch CPU and CUDA.

Captured as plain python objects and tensors (see ``state_files``), so they can be stored
without pickling and restored to continue every random stream (dropout, shuffling) exactly.
"""

from __future__ import annotations

import json
import random

import numpy as np
import torch
import torch.distributed as dist


def capture_rng() -> dict:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def capture_rng_every_rank() -> list[dict]:
    """Every process's streams, in rank order (a collective under torch.distributed: every rank calls
    it). Each rank draws its own dropout masks, so continuing all of them from rank 0's is not exact."""
    own = capture_rng()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [own]
    return [_from_bytes(data) for data in _all_gather_bytes(_to_bytes(own))]


def restore_rng_of_rank(states: list[dict]) -> None:
    """This process's streams from ``capture_rng_every_rank``'s list; on another number of processes
    (the data is split differently anyway) every rank takes rank 0's."""
    ranked = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if ranked else (0, 1)
    restore_rng(states[rank] if len(states) == world else states[0])


def _to_bytes(state: dict) -> bytes:
    plain = {**state, "torch": state["torch"].tolist()}
    if "cuda" in state:
        plain["cuda"] = [t.tolist() for t in state["cuda"]]
    return json.dumps(plain).encode()


def _from_bytes(data: bytes) -> dict:
    state = json.loads(data)
    state["torch"] = torch.tensor(state["torch"], dtype=torch.uint8)
    if "cuda" in state:
        state["cuda"] = [torch.tensor(t, dtype=torch.uint8) for t in state["cuda"]]
    return state


def _all_gather_bytes(data: bytes) -> list[bytes]:
    """Every rank's bytes (lengths may differ: each is padded to the longest, then cut back)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    world = dist.get_world_size()
    length = torch.tensor([len(data)], device=device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    longest = max(int(n) for n in lengths)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return [bytes(t[: int(n)].cpu().tolist()) for t, n in zip(gathered, lengths)]
