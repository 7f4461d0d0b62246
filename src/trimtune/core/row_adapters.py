"""Which adapter each example of a batch runs with, while a mixed batch is open (``core/mixed_batch.py``).

A mixed batch is routed per thread (and per asyncio task): the routing lives in a ``ContextVar``,
so another thread running the same model at the same time sees its own routing or none and runs
its active adapters as usual. Hosts look themselves up by identity (``rows_for(host)``); while no
mixed batch is open anywhere, the lookup is skipped at once (``_open`` is 0), so the ordinary
forward costs nothing more and a compiled graph sees a constant.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from contextvars import ContextVar

import torch

BASE = "__base__"  # peft's name for "this example runs the base model, no adapter"

_ROUTES: ContextVar[dict[int, RowAdapters]] = ContextVar("trimtune_row_adapters", default={})
_open = 0  # mixed batches open in any thread
_open_lock = threading.Lock()


class RowAdapters:
    """One adapter name (or ``BASE``) per example; rows grouped by name, in order of first appearance."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        groups: dict[str, list[int]] = {}
        for row, name in enumerate(self.names):
            groups.setdefault(name, []).append(row)
        self.groups = groups
        self._indices: dict[torch.device, dict[str, torch.Tensor]] = {}

    def indices(self, rows: int, device: torch.device, where: str) -> dict[str, torch.Tensor]:
        """{name: row indices on ``device``} for a batch of ``rows`` examples reaching ``where``."""
        if rows != len(self.names):
            raise ValueError(
                f"mixed_batch has {len(self.names)} adapter names but {where} got a batch of {rows} examples; give one "
                f"name per example (with beam search or num_return_sequences > 1, repeat each name that many times)")
        if device not in self._indices:
            self._indices[device] = {n: torch.tensor(members, device=device) for n, members in self.groups.items()}
        return self._indices[device]


def assemble(parts: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> torch.Tensor:
    """One output for the whole batch from (row indices, output of those rows) per group."""
    first = parts[0][1]
    out = first.new_empty((batch, *first.shape[1:]))
    for idx, part in parts:
        out[idx] = part
    return out


def rows_for(host) -> RowAdapters | None:
    """The routing of the mixed batch this thread has open on ``host``'s model, if any."""
    if not _open:
        return None
    return _ROUTES.get().get(id(host))


@contextlib.contextmanager
def routed(hosts: Iterable, rows: RowAdapters):
    """Inside the block, in this thread, ``hosts`` run each example with its own adapter."""
    global _open
    token = _ROUTES.set({**_ROUTES.get(), **{id(host): rows for host in hosts}})
    with _open_lock:
        _open += 1
    try:
        yield
    finally:
        with _open_lock:
            _open -= 1
        _ROUTES.reset(token)
