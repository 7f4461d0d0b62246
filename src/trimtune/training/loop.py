"""``train``: a plain training loop with gradient accumulation, clipping, mixed precision,
periodic evaluation, NaN/inf detection, a progress bar and callbacks (see ``callbacks.py`` for the
order of the hooks). It trains what is trainable: with an adapter applied, only the adapter.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.config import ConfigError, check_positive, check_positive_int
from ..core.state import state_of
from .batches import LossFn, lm_target_tokens, run_batch, to_device
from .callbacks import CallbackList, TrainContext
from .checkpoint import as_checkpoint_config, latest_checkpoint
from .clip import as_clip_config, clip_gradients
from .data_position import DataPosition
from .distributed import mean_over_ranks, sum_over_ranks, unwrap_model, world_size
from .evaluate import Metric, evaluate, model_device
from .fsdp import average_replicated_gradients
from .precision import MixedPrecision
from .sharded_checkpoint import make_checkpointer

DEFAULT_LR = 1e-3


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before it reached the weights."""

    def __init__(self, step: int, loss: float, last_finite: float | None, result: TrainResult):
        self.step, self.loss, self.last_finite, self.result = step, loss, last_finite, result
        last = f"the last finite step loss was {last_finite:.6g} at step {step - 1}" if last_finite is not None else "no step had finished"
        super().__init__(
            f"loss is {loss} at step {step}; {last}. Training stopped before updating the weights. "
            "Try a lower learning rate, gradient clipping (train(..., clip=1.0); in a recipe train.clip_norm: 1.0), "
            "or check the data of that step."
        )


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # mean loss of each optimizer step
    grad_norms: list[float] = field(default_factory=list)  # before clipping; only when clipping
    eval_history: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, metrics)
    wall_time: float = 0.0  # seconds
    steps: int = 0

    @property
    def final_metrics(self) -> dict[str, float] | None:
        return self.eval_history[-1][1] if self.eval_history else None


def train(
    model: nn.Module,
    train_data: Iterable,
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    lr: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    clip=None,
    eval_data: Iterable | None = None,
    eval_every: int | None = None,
    metric: Metric | dict[str, Metric] | None = None,
    callbacks: Iterable[object] = (),
    progress: bool = True,
    device: torch.device | str | None = None,
    loss_fn: LossFn | None = None,
    grad_accum: int = 1,
    autocast=None,
    checkpoint=None,
    resume: bool | str | os.PathLike = False,
    run_config: dict | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data`` (an iterable of batches, re-iterated each epoch).

    Runs ``epochs`` passes, or ``max_steps`` optimizer steps, whichever ends first (at least one
    is required). One optimizer step consumes ``grad_accum`` batches. ``optimizer`` defaults to
    AdamW(lr, default 1e-3) over the parameters that require grad; it may also be a factory called as
    ``optimizer(model, lr=lr, extra=callback_parameters)`` once callbacks are known (e.g.
    ``functools.partial(loraplus_optimizer, ratio=16)``). ``scheduler`` is an LR scheduler
    or a factory ``(optimizer, total_steps) -> scheduler`` such as ``linear_schedule(warmup)``;
    it steps once per optimizer step. ``clip``: a ``ClipConfig`` or a number (max global grad
    norm). With ``eval_data``, ``evaluate(model, eval_data, metric)`` runs every ``eval_every``
    steps and after the last step. ``autocast``: None, "bf16" or "fp16". ``device``: move the
    model there (default: stay where it is); batches follow the model.

    ``checkpoint``: a ``CheckpointConfig`` (or a directory: save at the end only). ``resume``: True
    continues from the latest checkpoint in that directory, a path from that checkpoint; model
    trainables, optimizer, scheduler, RNG and data position are restored, so the run ends as if
    never interrupted. ``run_config``: any JSON-able description of the run (a recipe); a
    checkpoint is refused by a run whose config, base model or adapters differ.
    """
    _check_args(epochs, max_steps, lr, optimizer, eval_data, eval_every, grad_accum)
    checkpoint = as_checkpoint_config(checkpoint)
    if resume and checkpoint is None:
        raise ConfigError("resume needs checkpoint=CheckpointConfig(dir, ...) (the directory the run saves to)")
    if device is not None:
        model.to(device)
    device = model_device(model)
    # Callbacks a tuning method needs every step (AdaLoRA's rank update) run without being asked for.
    hooks = CallbackList([*state_of(unwrap_model(model)).callbacks.values(), *callbacks])
    # A callback's own parameters (distillation's width maps) train with the model's.
    callback_parameters = hooks.trainable_parameters()
    if optimizer is None or not isinstance(optimizer, torch.optim.Optimizer):  # a factory, like default_optimizer
        optimizer = (optimizer or default_optimizer)(model, lr=lr or DEFAULT_LR, extra=callback_parameters)
    total_steps = optimizer_steps(train_data, epochs, max_steps, grad_accum)
    if callable(scheduler) and not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        scheduler = scheduler(optimizer, total_steps)
    clip = as_clip_config(clip)
    precision = MixedPrecision(autocast, device)
    ctx = TrainContext(model, optimizer, scheduler, total_steps=total_steps, callback_parameters=callback_parameters)
    result = TrainResult()
    position = DataPosition()
    resume_from = _resume_path(resume, checkpoint.dir) if resume else None
    checkpointer = make_checkpointer(checkpoint, model, total_steps, run_config, resume_from) if checkpoint else None
    if resume:
        checkpointer.restore(resume_from, ctx, position, result, precision.scaler)

    was_training = model.training
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=total_steps, initial=ctx.step, disable=not progress, desc="train", unit="step", dynamic_ncols=True)
    try:
        optimizer.zero_grad(set_to_none=True)
        hooks.call("on_train_start", ctx)
        groups = _step_groups(train_data, epochs, grad_accum, position)
        if max_steps is not None and ctx.step >= max_steps:  # resumed from the final checkpoint
            groups = iter(())
        for ctx.epoch, group in groups:
            loss = mean_over_ranks(_accumulate(ctx, group, loss_fn, precision, hooks, device, result))
            _optimizer_step(ctx, clip, precision, hooks, result)
            result.losses.append(loss)
            result.steps = ctx.step
            hooks.call("on_step_end", ctx, ctx.step, loss)
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if eval_data is not None and eval_every and ctx.step % eval_every == 0:
                _evaluate(ctx, eval_data, metric, loss_fn, hooks, result, bar)
            if checkpointer is not None and checkpointer.due(ctx.step):
                checkpointer.save(ctx, position, result, precision.scaler)
            if ctx.stop or ctx.step == max_steps:
                break
        if eval_data is not None and (not result.eval_history or result.eval_history[-1][0] != ctx.step):
            _evaluate(ctx, eval_data, metric, loss_fn, hooks, result, bar)
        if checkpointer is not None and checkpointer.last_saved != ctx.step:
            checkpointer.save(ctx, position, result, precision.scaler)
    except NonFiniteLossError as error:
        if checkpointer is not None:
            last = latest_checkpoint(checkpoint.dir)
            error.add_note(f"The last good checkpoint is {last}." if last else "No checkpoint had been written yet.")
        raise
    finally:
        bar.close()
        model.train(was_training)
        result.wall_time = time.perf_counter() - start
    hooks.call("on_train_end", ctx, result)
    return result


def default_optimizer(model: nn.Module, lr: float, extra: list[nn.Parameter] = ()) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad] + list(extra)
    if not params:
        raise ValueError("the model has no trainable parameters: apply an adapter (trimtune.apply) or unfreeze some")
    return torch.optim.AdamW(params, lr=lr)


def _accumulate(ctx, group, loss_fn, precision, hooks, device, result) -> float:
    """Forward and backward every micro-batch of one step; returns this process's share of the step's
    loss, weighted so that the mean over processes is the step's loss."""
    model, total = ctx.model, 0.0
    weights = _micro_batch_weights(unwrap_model(model), group, loss_fn)
    for i, (batch, weight) in enumerate(zip(group, weights)):
        last = i == len(group) - 1
        # under DistributedDataParallel, synchronise gradients only once per step
        sync = model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext()
        with sync:
            with precision.autocast():
                batch = to_device(batch, device)
                output = run_batch(model, batch, loss_fn)
                loss = output.loss
                hooks.call("on_forward", ctx, batch, output)  # distillation reads the inputs and logits
                if loss is None:
                    raise ValueError("the batch gave no loss: dict batches need 'labels' (the model returns .loss), (inputs, targets) batches need loss_fn")
                loss = sum(hooks.loss_terms(ctx), loss)
            value = loss.detach().item()
            if not math.isfinite(value):
                last_finite = result.losses[-1] if result.losses else None
                raise NonFiniteLossError(ctx.step + 1, value, last_finite, result)
            precision.backward(loss * weight)
        total += value * weight
    return total


def _micro_batch_weights(model: nn.Module, group: list, loss_fn) -> list[float]:
    """What each micro-batch's loss is multiplied by before its backward pass.

    A causal LM's loss is a mean over target tokens, and micro-batches (packed windows, completions of
    any length) hold different numbers of them; the step's loss is the mean over every target token of
    the global batch, all micro-batches of all processes, as transformers' Trainer and TRL weigh it.
    So micro-batch i weighs n_i / N, times the process count that gradient averaging divides by. Other
    losses weigh each micro-batch alike (1 / their number)."""
    counts = [lm_target_tokens(model, batch) for batch in group] if loss_fn is None else [None]
    total = sum_over_ranks(sum(counts)) if None not in counts else 0
    if not total:  # not a causal LM, or no target anywhere (its loss is NaN and stops the run)
        return [1 / len(group)] * len(group)
    return [n * world_size() / total for n in counts]


def _optimizer_step(ctx, clip, precision, hooks, result) -> None:
    """Clip, step, let the hooks see the gradients, then advance the schedule and clear them."""
    average_replicated_gradients(ctx.model)  # FSDP: parameters it does not manage (no-op otherwise)
    precision.unscale(ctx.optimizer)
    if clip is not None:
        ctx.grad_norm = clip_gradients(ctx.model, clip)
        result.grad_norms.append(ctx.grad_norm)
    hooks.call("before_optimizer_step", ctx)
    stepped = precision.step(ctx.optimizer)
    ctx.step += 1
    hooks.call("after_optimizer_step", ctx)
    if ctx.scheduler is not None and stepped:
        ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)


def _evaluate(ctx, eval_data, metric, loss_fn, hooks, result, bar) -> None:
    metrics = evaluate(ctx.model, eval_data, metric, loss_fn=loss_fn)
    result.eval_history.append((ctx.step, metrics))
    hooks.call("on_eval", ctx, ctx.step, metrics)
    if not bar.disable:
        bar.write(f"step {ctx.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def _step_groups(train_data, epochs, grad_accum, position: DataPosition) -> Iterator[tuple[int, list]]:
    """(epoch, the grad_accum batches of one step); an epoch's last group may be shorter.
    Starts where ``position`` is (a resumed run) and keeps it up to date."""
    start = position.epoch
    for epoch in range(start, epochs) if epochs is not None else itertools.count(start):
        batches, skipped = position.open_epoch(train_data, epoch)
        empty = skipped == 0
        while group := list(itertools.islice(batches, grad_accum)):
            empty = False
            position.batches += len(group)
            yield epoch, group
        if empty:
            raise ValueError(f"train_data yielded no batches in epoch {epoch + 1}; pass a re-iterable such as a DataLoader or a list")


def optimizer_steps(train_data, epochs, max_steps, grad_accum) -> int | None:
    """How many optimizer steps ``train`` takes with these settings (None: unknown, ``train_data`` has no length)."""
    try:
        per_epoch = math.ceil(len(train_data) / grad_accum)
    except TypeError:  # an iterable without len()
        return max_steps
    by_epochs = epochs * per_epoch if epochs is not None else None
    return min(s for s in (max_steps, by_epochs) if s is not None)


def _check_args(epochs, max_steps, lr, optimizer, eval_data, eval_every, grad_accum) -> None:
    if epochs is None and max_steps is None:
        raise ConfigError("train needs epochs or max_steps (or both; whichever ends first stops training)")
    for name, value in (("epochs", epochs), ("max_steps", max_steps), ("eval_every", eval_every)):
        if value is not None:
            check_positive_int(name, value)
    check_positive_int("grad_accum", grad_accum)
    if lr is not None:
        check_positive("lr", lr)
        if optimizer is not None and (isinstance(optimizer, torch.optim.Optimizer) or not callable(optimizer)):
            # a factory takes lr (it builds the optimizer); a built optimizer has its own
            raise ConfigError("pass either lr or an optimizer (set the learning rate on your optimizer), not both")
    if eval_every is not None and eval_data is None:
        raise ConfigError("eval_every needs eval_data")


def _resume_path(resume, directory):
    if resume is True:
        path = latest_checkpoint(directory)
        if path is None:
            raise FileNotFoundError(f"resume=True but {directory} holds no complete checkpoint (step-* directory); start without resume")
        return path
    return Path(resume)
