"""The hook points of ``train``: what a callback may implement and when each hook runs.

A callback is any object; it implements the hooks it needs (subclassing ``Callback`` is optional).
Every hook receives the ``TrainContext`` first. One optimizer step runs:

    for each micro-batch (grad_accum of them):
        output = model(batch)
        on_forward(ctx, batch, output)               the batch (on the device) and its BatchOutput
                                                   (loss, logits, labels): distillation's teacher input
        loss = data loss + Σ loss_term(ctx)          regularisers (L1, group lasso, orthogonality),
                                                   distillation
        backward
    clip gradients
    before_optimizer_step(ctx)                     final gradients at the weights they were taken at:
                                                   movement importance (−Σ W_t · g_t)
    optimizer.step();  ctx.step += 1
    after_optimizer_step(ctx)                      gradients still present: re-apply pruning masks,
                                                   AdaLoRA's rank update
    scheduler.step();  optimizer.zero_grad()
    on_step_end(ctx, step, loss)                   logging, checkpoints; set ctx.stop to end early
    on_eval(ctx, step, metrics)                    only when an evaluation ran at this step

A callback that owns parameters to train (distillation's width maps) returns them from
``trainable_parameters()``; the default optimizer includes them (a caller's optimizer must).

``on_train_start(ctx)`` runs once before the first batch, ``on_train_end(ctx, result)`` once after
the last step (not when training stops with an error). For each hook, callbacks run in the order given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

HOOKS = ("on_train_start", "on_forward", "loss_term", "before_optimizer_step", "after_optimizer_step", "on_step_end", "on_eval", "on_train_end")


@dataclass
class TrainContext:
    """What hooks see. ``step`` counts optimizer steps taken so far; ``epoch`` is 0-based;
    ``total_steps`` is None when the data has no length and only ``epochs`` bounds the run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None = None
    step: int = 0
    epoch: int = 0
    total_steps: int | None = None
    stop: bool = False  # a hook sets this to end training after the current step
    grad_norm: float | None = None  # the last step's gradient norm before clipping (only when clipping)
    # parameters callbacks own and train (distillation's width maps): checkpoints save and restore them
    callback_parameters: list[nn.Parameter] = field(default_factory=list)


class Callback:
    """No-op hooks to subclass; override the ones you need."""

    def on_train_start(self, ctx: TrainContext) -> None: ...

    def on_forward(self, ctx: TrainContext, batch, output) -> None:
        """After the model ran on one micro-batch (``output``: a ``BatchOutput``), before its loss terms."""

    def loss_term(self, ctx: TrainContext) -> torch.Tensor | None:
        """An extra term added to the loss of every micro-batch (None for nothing)."""
        return None

    def before_optimizer_step(self, ctx: TrainContext) -> None: ...

    def after_optimizer_step(self, ctx: TrainContext) -> None: ...

    def on_step_end(self, ctx: TrainContext, step: int, loss: float) -> None: ...

    def on_eval(self, ctx: TrainContext, step: int, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, ctx: TrainContext, result) -> None: ...


class CallbackList:
    """Dispatches each hook to the callbacks that implement it, in order."""

    def __init__(self, callbacks: Iterable[object]):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
                raise TypeError(f"{type(callback).__name__} implements none of the training hooks {', '.join(HOOKS)}")

    def call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters callbacks own and train (``trainable_parameters()``), for the default optimizer."""
        found = (getattr(c, "trainable_parameters", None) for c in self.callbacks)
        return [p for params in found if params is not None for p in params()]

    def loss_terms(self, ctx: TrainContext) -> list[torch.Tensor]:
        terms = (getattr(c, "loss_term", None) for c in self.callbacks)
        return [t for t in (term(ctx) for term in terms if term is not None) if t is not None]
