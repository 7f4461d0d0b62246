"""What every demo step shares: options, where to write, how to print, and the figures gathered."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class DemoContext:
    """out_dir: where steps write artifacts. quick: a reduced setting (for tests), not the real figures.
    quiet: no progress bars or step details, only each step's results. results: figures per step,
    written to ``out_dir/demo_results.json`` at the end so scripts and tests can read them."""

    out_dir: Path
    quick: bool = False
    quiet: bool = False
    seed: int = 0
    results: dict[str, dict] = field(default_factory=dict)

    def detail(self, message: str) -> None:
        """Progress and explanations; suppressed by --quiet."""
        if not self.quiet:
            print(message, flush=True)

    def report(self, message: str) -> None:
        """A result line; always printed."""
        print(message, flush=True)

    def write_results(self) -> Path:
        """Write the gathered figures atomically (temp file + rename)."""
        path = self.out_dir / "demo_results.json"
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=".demo_results.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.results, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
        return path


@dataclass(frozen=True)
class Step:
    """One part of the demo: ``key`` names its entry in ``DemoContext.results``; ``run(ctx)`` prints
    its part and records its figures in ``ctx.results[key]``."""

    key: str
    title: str
    run: Callable[[DemoContext], None]
