"""The demo's diff-pruning step (quick mode): it trains, projects, saves and prints the artifact size."""

from __future__ import annotations

import re

from trimtune.demo import run_demo
from trimtune.demo.diff_text import STEP
from trimtune.methods.diff.artifact import CONFIG_FILE, TENSORS_FILE


def test_demo_diff_step_prints_the_artifact_size(tmp_path, capsys):
    ctx = run_demo(tmp_path, quick=True, quiet=True, steps=[STEP])
    figures = ctx.results["diff_text"]
    printed = capsys.readouterr().out
    size = int(re.search(r"diff artifact: ([\d,]+) bytes", printed).group(1).replace(",", ""))
    assert size == figures["artifact_bytes"] and size <= 0.01 * figures["dense_bytes"]
    assert figures["kept"] == round(0.005 * figures["total"])
    assert (tmp_path / "diff_artifact" / CONFIG_FILE).is_file() and (tmp_path / "diff_artifact" / TENSORS_FILE).is_file()
