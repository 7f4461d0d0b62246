"""Where the loop is in its data, so a resumed run sees exactly the batches the interrupted one
would have seen next, in the same order, even with a shuffling DataLoader.

A DataLoader's order is fixed when its iterator is made: a sampler with ``set_epoch`` (e.g.
``DistributedSampler``) draws its permutation from ``seed + epoch``; the default ``RandomSampler``
(and the worker seeds) draw from torch's global RNG. So the position is (epoch, batches consumed in
it) plus the RNG state at the epoch's start. Resuming re-creates that epoch's iterator under the
saved epoch-start RNG, skips the consumed batches (they are loaded and dropped: cheap next to a
training step), then restores the RNG of the step the checkpoint was taken after.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from .rng import capture_rng, restore_rng


class DataPosition:
    def __init__(self):
        self.epoch = 0
        self.batches = 0  # batches of ``epoch`` consumed so far
        self.epoch_rng: dict | None = None  # the RNG when ``epoch``'s iterator was made
        self._skip = 0  # batches to skip when the resumed epoch is opened

    def state(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "epoch_rng": self.epoch_rng}

    def resume(self, state: dict) -> None:
        self.epoch, self.batches, self.epoch_rng = state["epoch"], state["batches"], state["epoch_rng"]
        self._skip = self.batches

    def open_epoch(self, data: Iterable, epoch: int) -> tuple[Iterator, int]:
        """An iterator over ``epoch``'s batches not consumed yet, and how many were skipped."""
        sampler = getattr(data, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)
        skip, self._skip = self._skip, 0
        if skip == 0:
            self.epoch, self.batches, self.epoch_rng = epoch, 0, capture_rng()
            return iter(data), 0
        step_rng = capture_rng()
        restore_rng(self.epoch_rng)
        batches = iter(data)
        skipped = sum(1 for _ in itertools.islice(batches, skip))
        if skipped < skip:
            raise ValueError(
                f"the checkpoint is {skip} batches into epoch {epoch + 1}, but the data has only {skipped} batches "
                "in that epoch: resume with the same data and batch size"
            )
        restore_rng(step_rng)
        return batches, skip
