"""The shrink benchmark's cases still run (tiny sizes), so the script does not rot."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def test_lenet_case_matches_torch_pruning_structure():
    import shrink_vs_torch_pruning as bench

    dense, ours, theirs, inputs, *_ , reload = bench.lenet_case(quick=True)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    assert sum(p.numel() for p in ours.parameters()) < sum(p.numel() for p in dense.parameters())
    assert reload.startswith("yes (max diff 0.0e+00)")
