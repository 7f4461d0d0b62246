"""`trimtune demo`: a short tour of trimtune, run as an ordered list of steps (see ``steps.py``)."""

from __future__ import annotations

import time
from pathlib import Path

from .context import DemoContext, Step
from .steps import STEPS


def run_demo(out_dir: str | Path, quick: bool = False, quiet: bool = False, steps: list[Step] | None = None) -> DemoContext:
    """Run every step (or ``steps``) in order with one shared context; return it with the figures."""
    steps = STEPS if steps is None else steps
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out_dir=out, quick=quick, quiet=quiet)
    start = time.perf_counter()
    for i, step in enumerate(steps, 1):
        ctx.report(f"\n[{i}/{len(steps)}] {step.title}")
        step.run(ctx)
    ctx.report(f"\nDemo finished in {time.perf_counter() - start:.1f} s; figures in {ctx.write_results()}")
    return ctx


__all__ = ["STEPS", "DemoContext", "Step", "run_demo"]
