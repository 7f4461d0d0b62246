"""The shared benchmark harness measures what it claims: interleaved medians and a child's peak RSS."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _harness  # noqa: E402


def _allocate(mib: int):
    def run():
        block = torch.ones(mib * 1024 * 1024 // 4)  # touched pages: they count in RSS
        return float(block[-1])

    return run


def test_time_variants_medians_order_and_ratio():
    timings = _harness.time_variants({"fast": lambda: time.sleep(0.001), "slow": lambda: time.sleep(0.012)}, rounds=5, warmup=1)
    assert len(timings["fast"].samples_ms) == 5
    assert timings["fast"].median_ms < timings["slow"].median_ms
    assert _harness.ratio(timings["slow"], timings["fast"]) > 1  # a ratio band would be flaky on a loaded machine
    assert timings["slow"].cpu_median_ms < timings["slow"].median_ms  # sleeping is not CPU work


def test_cpu_time_counts_work():
    def spin():
        end = time.process_time() + 0.01
        while time.process_time() < end:
            pass

    timings = _harness.time_variants({"spin": spin}, rounds=3, warmup=0)
    assert timings["spin"].cpu_median_ms >= 9.5


def test_peak_memory_of_a_child_counts_only_the_measured_calls():
    peak = _harness.peak_memory_mb(_allocate, 64)
    assert 60 <= peak <= 90, peak  # 64 MiB tensor; the loaded baseline is excluded


def _model_then_allocate(model_mib: int, mib: int):
    model = torch.ones(model_mib * 1024 * 1024 // 4)  # kept alive by the closure, like a model
    run = _allocate(mib)
    return lambda: run() + float(model[0])


def test_peak_with_model_adds_what_build_keeps():
    growth, with_model = _harness.peak_memory_mb(_model_then_allocate, 96, 32, with_model=True)
    assert 28 <= growth <= 58, growth  # the 32 MiB call alone
    assert 120 <= with_model <= 150, with_model  # + the 96 MiB the build keeps


def test_markdown_table_formats_rows():
    table = _harness.markdown_table(["a", "b"], [["x", 0.91234], ["y", 2]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x | 0.912 |", "| y | 2 |"]


def test_memory_method_is_known():
    assert _harness.memory_method() in ("VmHWM", "ru_maxrss")
