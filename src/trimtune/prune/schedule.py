"""When to prune: one-shot, iterative rounds, or the gradual cubic schedule (Zhu & Gupta, 2017),
placed before, during or after training. A schedule is a pure function ``step -> target sparsity``;
``Pruner`` applies it to a model during a training loop.

    schedule = PruneSchedule.for_timing("during", final=0.8, total_steps=300, style="cubic")
    pruner = Pruner(model, PruneConfig(...), schedule)
    for step in range(300):
        pruner.step(step)        # prunes when the target rises; a no-op otherwise
        ...forward, backward, optimizer.step()  (with keep_pruned(optimizer, model))

Timings: ``"before"`` prunes everything at step 0 (pruning at init, then the whole run trains the
sparse net); ``"during"`` ramps from step 0 to ``ramp_fraction`` of the run and fine-tunes the
rest; ``"after"`` trains dense for ``dense_fraction`` of the run, then prunes (ramping over the
next part for iterative/cubic) and fine-tunes to the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..core.config import ConfigError, check_choice, check_fraction, check_positive_int
from ..core.masks import enforce_masks
from ..training.fsdp import is_sharded
from .prune_model import PruneConfig, prune


@dataclass(frozen=True)
class PruneSchedule:
    """final: sparsity to reach (fraction of units). style: "one-shot" (all at ``begin``),
    "iterative" (``rounds`` equal-ratio steps between ``begin`` and ``end``, each pruning the same
    fraction of what remains) or "cubic" (Zhu & Gupta, 2017: s_t = s_f + (s_i − s_f)(1 − (t − begin)/(end −
    begin))³, updated every ``every`` steps, from the ``initial`` sparsity s_i, default 0, at ``begin``)."""

    final: float
    style: str = "one-shot"
    begin: int = 0
    end: int = 0
    rounds: int = 3
    every: int = 1
    initial: float = 0.0

    def __post_init__(self):
        check_fraction("final", self.final)
        check_fraction("initial", self.initial)
        if self.initial > self.final:
            raise ConfigError(f"initial sparsity ({self.initial}) must not exceed final ({self.final})")
        if self.initial and self.style != "cubic":
            raise ConfigError(f"initial sparsity applies to the cubic schedule only, got style={self.style!r}")
        check_choice("style", self.style, ("one-shot", "iterative", "cubic"))
        check_positive_int("rounds", self.rounds)
        check_positive_int("every", self.every)
        if not 0 <= self.begin <= self.end:
            raise ConfigError(f"need 0 <= begin <= end, got begin={self.begin}, end={self.end}")

    @classmethod
    def for_timing(cls, timing: str, final: float, total_steps: int, style: str = "one-shot",
                   ramp_fraction: float = 0.6, dense_fraction: float = 0.3, **kwargs) -> PruneSchedule:
        check_choice("timing", timing, ("before", "during", "after"))
        check_positive_int("total_steps", total_steps)
        if timing == "before":
            if style != "one-shot":
                raise ConfigError(f"timing='before' prunes at initialisation in one shot; style must be 'one-shot', got {style!r}")
            return cls(final, style, 0, 0, **kwargs)
        start = 0 if timing == "during" else int(total_steps * dense_fraction)
        end = start if style == "one-shot" else start + int((total_steps - start) * ramp_fraction)
        return cls(final, style, start, end, **kwargs)

    def sparsity_at(self, step: int) -> float:
        if step < self.begin:
            return 0.0
        if step >= self.end or self.style == "one-shot":
            return self.final
        progress = (step - self.begin) / (self.end - self.begin)
        if self.style == "iterative":
            done = min(int(progress * self.rounds) + 1, self.rounds)  # rounds fire at begin + i·span/rounds
            return 1 - (1 - self.final) ** (done / self.rounds)
        progress = ((step - self.begin) // self.every * self.every) / (self.end - self.begin)
        return self.final + (self.initial - self.final) * (1 - progress) ** 3


class Pruner:
    """Applies a schedule: at each step, prunes up to the schedule's target (never un-prunes)."""

    def __init__(self, model: nn.Module, config: PruneConfig, schedule: PruneSchedule):
        self.model, self.config, self.schedule = model, config, schedule
        self.reached = 0.0

    def step(self, step: int) -> bool:
        """Prune if the target sparsity went up; returns whether it pruned."""
        target = self.schedule.sparsity_at(step)
        if target <= self.reached:
            return False
        prune(self.model, self.config, sparsity=target)
        self.reached = target
        return True


# Why not under FSDP2: pruning and mask enforcement read and write whole weights, which FSDP2 holds
# as 1/N slices (DTensors) on each rank; a global top-k over slices would need gathers of every
# weight at every pruning step. Masks fixed before sharding need no callback: they are buffers,
# whole and identical on every rank (shard_model checks), applied in every forward to a frozen base.
SHARDED_REFUSAL = (
    "PruningCallback cannot run on a model sharded with FSDP2 (shard_model / recipe distributed.strategy 'fsdp'): "
    "masks that change during training (a pruning schedule, recipe prune.schedule / prune.timing) are not supported "
    "under FSDP. What works: prune before sharding (trimtune.prune(model, ...), then shard_model): the masks stay "
    "fixed and every forward applies them, no callback needed; or train with distributed.strategy 'ddp'"
)


class PruningCallback:
    """``trimtune.train`` callback for masked fine-tuning and scheduled pruning: prunes by the
    schedule before each step (if given), re-applies the masks to the weights and their optimizer
    state after every optimizer step, and feeds a ``Movement`` importance the gradients before each
    step (scores are taken at the weights the gradients belong to)."""

    def __init__(self, config: PruneConfig | None = None, schedule: PruneSchedule | None = None):
        if (config is None) != (schedule is None):
            raise ConfigError("PruningCallback needs both config and schedule to prune, or neither to only keep masks")
        self.config, self.schedule = config, schedule
        self.pruner: Pruner | None = None

    def on_train_start(self, ctx) -> None:
        if is_sharded(ctx.model):
            raise ConfigError(SHARDED_REFUSAL)
        if self.schedule is not None:
            self.pruner = Pruner(ctx.model, self.config, self.schedule)
            self.pruner.step(ctx.step)

    def before_optimizer_step(self, ctx) -> None:
        # Movement scores −Σ W_t · g_t (Sanh et al., 2020): the weight the gradient was taken at, so before the step.
        update = getattr(self.config.importance, "update", None) if self.config is not None else None
        if update is not None:
            update(ctx.model)

    def after_optimizer_step(self, ctx) -> None:
        enforce_masks(ctx.model, ctx.optimizer)

    def on_step_end(self, ctx, step: int, loss: float) -> None:
        if self.pruner is not None:
            self.pruner.step(step)
