"""benchmarks/tuners.py's bookkeeping (no measuring here: figures belong in docs/benchmarks.md):
entry selection, and tables that say what was not measured instead of losing it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tuners  # noqa: E402


def name(i: int) -> str:
    entry = tuners.entries()[i]
    return f"{entry.method}@{entry.model}"


def test_only_keeps_the_given_order_and_skip_removes():
    picked = tuners.selected(["QLoRA NF4 r=8 + ckpt", "IA3@llama", "IA3@minilm"], [])
    assert [name(i) for i in picked] == ["QLoRA NF4 r=8 + ckpt@llama", "IA3@llama", "IA3@minilm"]
    both = tuners.selected(["IA3"], ["IA3@minilm"])  # a bare method name matches every model
    assert [name(i) for i in both] == ["IA3@llama"]
    assert len(tuners.selected(None, [])) == len(tuners.entries())
    with pytest.raises(SystemExit, match="matched no entry; entries are"):
        tuners.selected(["LoRA r=99"], [])


def row(method="IA3", model="llama", peft=True, **extra):
    r = {"method": method, "model": model, "trainable_ours": 10, "step_ms_ours": 110.0, "step_cpu_ms_ours": 50.0,
         "spread_pct_ours": 3.0, "peak_mb_ours": 20.0, "peak_total_mb_ours": 70.0, "infer_overhead_ours": 0.05,
         "weights_mb_ours": 40.0, "weights_mb_base": 120.0}
    if peft:
        r.update(trainable_peft=10, step_ms_peft=100.0, step_cpu_ms_peft=40.0, spread_pct_peft=4.0, peak_mb_peft=30.0,
                 peak_total_mb_peft=80.0, infer_overhead_peft=0.1, weights_mb_peft=40.0)
    return {**r, **extra}


def test_speed_table_shows_ratios_failures_and_missing_baselines():
    rows = [row(), row("Prefix tuning 20", peft=False, peft_error="ValueError: no cache"),
            {"method": "AdaLoRA 12->8", "model": "llama", "error": "RuntimeError: boom"}]
    lines = tuners.speed_table(rows).splitlines()
    assert "| IA3 | llama | 10 / 10 | 110 | 100 | 1.10 | 1.25 |" in lines[2]
    assert "peft failed: ValueError: no cache" in lines[3]
    assert "not measured: RuntimeError: boom" in lines[4]


def test_qlora_summary_uses_what_was_measured():
    assert tuners.qlora_summary([row("LoRA r=8")]) == "QLoRA summary: no QLoRA rows measured"
    summary = tuners.qlora_summary([row("QLoRA NF4 r=8 + ckpt"), row("LoRA r=8", peak_total_mb_ours=140.0, peak_total_mb_peft=160.0)])
    assert "QLoRA NF4 r=8 + ckpt weight footprint / fp32 model: ours 0.333" in summary
    assert "ours / peft+bnb: 0.88" in summary  # 70 / 80
    assert "fp32 LoRA's (no checkpointing): ours 0.50, peft+bnb 0.50" in summary
    assert "step / fp32 LoRA step" not in summary  # needs a QLoRA row timed with its fp32 LoRA references
    timed = row("QLoRA NF4 r=8", step_ms_lora_ours=100.0, step_cpu_ms_lora_ours=50.0, step_ms_lora_peft=125.0,
                step_cpu_ms_lora_peft=40.0, weights_mb_ours=45.0)
    summary = tuners.qlora_summary([timed, row("QLoRA NF4 r=8 + ckpt")])
    assert "QLoRA NF4 r=8 weight footprint / fp32 model: ours 0.375" in summary and "+ ckpt weight" not in summary
    assert "QLoRA NF4 r=8 step / fp32 LoRA step, same rounds: ours 1.10 (CPU 1.00), peft+bnb / peft 0.80 (CPU 1.00)" in summary
