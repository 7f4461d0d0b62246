"""The LoRA benchmark script keeps running: a --quick smoke run on tiny configs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lora_vs_peft  # noqa: E402


def test_quick_run_prints_both_tables(capsys):
    assert lora_vs_peft.main(["--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| tiny BERT q,v r=4 |" in out and "| tiny Llama q,v r=4 |" in out
    assert "Training step" in out and "Inference" in out and "Conditions:" in out
    train_table = out[out.rindex("Training step"):out.rindex("Inference")]
    row = next(line for line in train_table.splitlines() if line.startswith("| tiny Llama"))
    cells = row.strip("|").split("|")
    assert all(float(c) > 0 for c in cells[1:5])  # full, floor, peft, trimtune step times
    assert all(float(c) > 0 for c in cells[9:12])  # peak MiB of full, peft, trimtune
