"""The demo's pruning step runs (quick setting) and records its figures."""

from trimtune.demo import run_demo
from trimtune.demo.prune_digits import STEP


def test_prune_digits_step_quick(tmp_path, capsys):
    ctx = run_demo(tmp_path, quick=True, quiet=False, steps=[STEP])
    figures = ctx.results["prune_digits"]
    assert abs(figures["sparsity"] - 0.8) < 1e-3
    assert figures["sparse_bytes"] < figures["dense_bytes"]
    assert figures["gradual_with_finetune"] > 0.5  # well above chance (10 %) even in the quick setting
    out = capsys.readouterr().out
    assert "sparsity by layer" in out and "total" in out
    assert (tmp_path / "digits_cnn_sparse.safetensors").exists()
