"""Statistics passes stop the forward once the last watched layer has taken its input.

A pass that only collects layer inputs (Wanda's norms, SparseGPT's Hessians, a structured shrink's
channel statistics) discards the forward's output, so everything after the last watched layer's
input is wasted work: in a decoder block, the down projection's product and the residual (a quarter
of the block's multiply-adds); over a whole model, the head.

The first forward runs whole and records the order in which the watched layers receive inputs.
Later forwards stop, by raising from a forward pre-hook, as soon as that whole sequence has been
seen again. Any departure from it (a mixture-of-experts router sending tokens elsewhere, a layer
applied twice in another order) lets that forward run to the end, so no input is ever missed.
The stopping hooks are registered after the callers' own hooks, so the last layer's statistic is
taken before the forward stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

from torch import nn


class _Done(Exception):
    """Raised by a watched layer's pre-hook: every watched input of this forward has been taken."""


class _Sequence:
    """The watched layers' order in the first forward, and how far a later forward has followed it."""

    def __init__(self):
        self.recorded: list[int] = []  # ids of the layers, in the order the first forward fed them
        self.first = True
        self.position = 0  # later forwards: firings so far that matched the recording; -1 once one did not

    def fired(self, layer: nn.Module) -> None:
        if self.first:
            self.recorded.append(id(layer))
            return
        if self.position < 0 or self.position >= len(self.recorded) or self.recorded[self.position] != id(layer):
            self.position = -1  # off the recorded path: this forward runs to its end
            return
        self.position += 1
        if self.position == len(self.recorded):
            raise _Done

    def end_forward(self) -> None:
        self.first, self.position = False, 0


@contextmanager
def stopping_after(layers: Iterable[nn.Module]):
    """Yield ``run(fn)``: calls ``fn()`` (one forward) and stops it early once every watched layer
    has received its input as in the first forward. Register the statistic hooks before entering."""
    sequence = _Sequence()
    handles = [layer.register_forward_pre_hook(lambda module, args: sequence.fired(module)) for layer in layers]

    def run(forward: Callable[[], object]) -> None:
        try:
            forward()
        except _Done:
            pass
        finally:
            sequence.end_forward()

    try:
        yield run
    finally:
        for handle in handles:
            handle.remove()
