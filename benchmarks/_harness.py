"""Timing and peak-memory helpers shared by the benchmarks.

Timing (``time_variants``): every variant runs in the same process, interleaved round by round in a
rotating order, after a warm-up; the figure is the median over rounds. On a shared machine the load
drifts during a run; interleaving spreads that drift evenly over the variants, so their *ratios*
stay meaningful even when the absolute times move.

Peak memory (``peak_memory_mb``): each variant runs in its OWN child process, so one variant's
allocator caches and freed-but-kept pages never count against another. The child builds its model
and inputs, then resets the kernel's resident-set high-water mark (``/proc/self/clear_refs`` = 5)
and records the current RSS as the baseline; after the measured calls the peak is ``VmHWM``.
The kernel tracks that peak on every page fault, so no short spike is missed (an RSS-sampling thread
could miss one), and it covers every allocation (torch tensors, Python objects, library buffers),
unlike the profiler's tensor-only accounting. ``ru_maxrss`` cannot be reset, so model *loading*
(which briefly holds two copies of the weights) could mask a smaller training peak; where the
reset is not allowed we fall back to ``ru_maxrss`` (``memory_method()`` says which was used).
Children come from a ``forkserver`` that has imported the heavy libraries once: starting one
costs a fork, not a fresh import of torch, and never forks a process whose OpenMP pool is live.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import re
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

THREADS = 2
PRELOAD = ["torch", "transformers", "peft"]


def set_threads(n: int | None = None) -> None:
    """Same intra-op thread count for every variant (and in every child); ``None``: ``THREADS``."""
    torch.set_num_threads(n or THREADS)


# ---- timing ----
@dataclass
class Timing:
    median_ms: float
    min_ms: float
    samples_ms: list[float]
    cpu_median_ms: float  # process CPU time (all threads): less sensitive to other processes' load

    @property
    def spread_pct(self) -> float:
        """Half the inter-quartile range, as % of the median: how noisy the rounds were."""
        q = statistics.quantiles(self.samples_ms, n=4) if len(self.samples_ms) > 1 else [self.median_ms] * 3
        return 50.0 * (q[2] - q[0]) / self.median_ms


def time_variants(variants: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 2) -> dict[str, Timing]:
    """Median wall time of each zero-argument callable, interleaved over ``rounds`` rounds."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:  # rotate so no variant always runs first
            start, start_cpu = time.perf_counter(), time.process_time()
            variants[name]()
            samples[name].append(1e3 * (time.perf_counter() - start))
            cpu[name].append(1e3 * (time.process_time() - start_cpu))
    return {n: Timing(statistics.median(s), min(s), s, statistics.median(cpu[n])) for n, s in samples.items()}


def ratio(numerator: Timing | float, denominator: Timing | float, cpu: bool = False) -> float:
    """Ratio of median wall times (``cpu=True``: of median process CPU times)."""

    def value(t):
        if not isinstance(t, Timing):
            return t
        return t.cpu_median_ms if cpu else t.median_ms

    return value(numerator) / value(denominator)


# ---- peak memory ----
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_method() -> str:
    """Which peak the children report: the resettable ``VmHWM`` or the fallback ``ru_maxrss``."""
    return "VmHWM" if _reset_high_water_mark() else "ru_maxrss"


def _measure_child(build: Callable, args: tuple, calls: int, threads: int, with_model: bool = False):
    set_threads(threads)
    before_build = _status_kib("VmRSS")
    run = build(*args)  # model + inputs are loaded: they are the baseline, not the variant's cost
    gc.collect()
    if _reset_high_water_mark():
        baseline = _status_kib("VmRSS")
        for _ in range(calls):
            run()
        peak = _status_kib("VmHWM")
        growth = (peak - baseline) / 1024
        return (growth, (peak - before_build) / 1024) if with_model else growth
    if with_model:
        raise OSError("the peak including the model needs a resettable VmHWM (/proc/self/clear_refs)")
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(calls):
        run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024


_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


def peak_memory_mb(build: Callable, *args, calls: int = 2, with_model: bool = False) -> float | tuple[float, float]:
    """Peak RSS growth (MiB) of ``calls`` calls of ``build(*args)()`` in a fresh child process.

    ``build`` must be a module-level function (it is sent to the child by reference) that loads
    everything and returns the zero-argument callable to measure. Include the first call: that is
    where optimizer states and gradient buffers are allocated. ``with_model=True`` returns (that
    growth, the peak during the calls measured from *before* ``build``: model weights + training
    state + activations, as when comparing a 4-bit base with an fp32 one); the build's own transient
    peak is excluded from both.
    Import what ``build`` imports lazily beforehand (``PRELOAD``) or its code counts as the model.
    """
    with _context().Pool(1) as pool:
        return pool.apply(_measure_child, (build, args, calls, THREADS, with_model))


# ---- output ----
def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
