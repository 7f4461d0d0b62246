"""Learning-rate schedules for ``train``: factories called with (optimizer, total_steps), because the
loop builds the default optimizer and knows the number of steps only once it starts."""

from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR

from ..core.config import check_positive_int


def linear_schedule(warmup_steps: int = 0):
    """Linear warm-up over ``warmup_steps`` (first step already at lr/warmup, not 0), then linear
    decay towards 0 at ``total_steps``."""
    if warmup_steps != 0:
        check_positive_int("warmup_steps", warmup_steps)

    def make(optimizer, total_steps: int | None) -> LambdaLR:
        if total_steps is None:
            raise ValueError("linear_schedule needs the number of steps: pass max_steps, or data with a len()")
        if warmup_steps >= total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be smaller than the number of steps ({total_steps})")

        def factor(step: int) -> float:  # step = scheduler steps taken so far
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            return max(0.0, (total_steps - step) / (total_steps - warmup_steps))

        return LambdaLR(optimizer, factor)

    return make
