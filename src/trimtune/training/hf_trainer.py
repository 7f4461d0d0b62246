"""Run trimtune's training callbacks inside transformers' ``Trainer``.

Methods that need work every step (AdaLoRA's rank update, pruning masks and schedules) are
``trimtune.train`` callbacks, some carried by the model itself (``state_of(model).callbacks``).
``TrimtuneCallback`` is a ``transformers.TrainerCallback`` that runs those and any given ones at
the matching points of the Trainer's loop:

    Trainer event        trimtune hook
    on_train_begin       on_train_start(ctx)
    on_pre_optimizer_step before_optimizer_step(ctx)  after clipping, before optimizer.step()
    on_optimizer_step    after_optimizer_step(ctx)     after optimizer.step(), before zero_grad()
    on_step_end          on_step_end(ctx, step, None)  the Trainer does not expose the step's loss
    on_evaluate          on_eval(ctx, step, metrics)
    on_train_end         on_train_end(ctx, None)       no TrainResult: the Trainer keeps its own state

A hook that sets ``ctx.stop`` ends training. ``loss_term`` cannot run here (the Trainer computes the
loss itself), so a callback that defines one is refused; add such a term in ``compute_loss``.
Import this module explicitly (it imports transformers' Trainer):
``from trimtune.training.hf_trainer import TrimtuneCallback``.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import TrainerCallback

from ..core.state import state_of
from .callbacks import Callback, CallbackList, TrainContext


class TrimtuneCallback(TrainerCallback):
    def __init__(self, callbacks: Iterable[object] = ()):
        self.extra = list(callbacks)
        self.hooks: CallbackList | None = None
        self.ctx: TrainContext | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.hooks = CallbackList([*state_of(model).callbacks.values(), *self.extra])
        for callback in self.hooks.callbacks:
            _refuse_loss_term(callback)
        self.ctx = TrainContext(model, optimizer, lr_scheduler, step=state.global_step, total_steps=state.max_steps)
        self.hooks.call("on_train_start", self.ctx)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.ctx.optimizer, self.ctx.scheduler = optimizer, lr_scheduler
        self.hooks.call("before_optimizer_step", self.ctx)
        return self._control(control)

    def on_optimizer_step(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.ctx.optimizer, self.ctx.scheduler = optimizer, lr_scheduler
        self.ctx.step = state.global_step + 1  # the Trainer counts the step only after this event
        self.hooks.call("after_optimizer_step", self.ctx)
        return self._control(control)

    def on_step_end(self, args, state, control, **kwargs):
        self.ctx.step, self.ctx.epoch = state.global_step, int(state.epoch or 0)
        self.hooks.call("on_step_end", self.ctx, state.global_step, None)
        return self._control(control)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.hooks is not None:  # Trainer.evaluate() may run outside train()
            self.hooks.call("on_eval", self.ctx, state.global_step, dict(metrics or {}))
            return self._control(control)

    def on_train_end(self, args, state, control, **kwargs):
        self.hooks.call("on_train_end", self.ctx, None)

    def _control(self, control):
        if self.ctx.stop:
            control.should_training_stop = True
        return control


def _refuse_loss_term(callback) -> None:
    method = getattr(type(callback), "loss_term", None)
    if method is not None and method is not Callback.loss_term:
        raise TypeError(
            f"{type(callback).__name__} adds a loss term, which cannot run inside transformers' Trainer "
            "(it computes the loss itself): add the term in Trainer.compute_loss, or train with trimtune.train"
        )
