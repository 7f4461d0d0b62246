"""Distillation under DDP: 2 CPU processes (gloo, torchrun), each with its own teacher, end with the
student and the width map 1 process gets from the same global batches (the map's gradients are
averaged across processes as DDP averages the student's)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ddp_distill_worker import PER_RANK_BATCH, run
from _training_helpers import BagOfTokens
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("distill_ddp")


def two_ranks(out: Path, *modes: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "tests" / "_ddp_distill_worker.py"), str(out), *modes]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]


@pytest.fixture(scope="module")
def ranks_dir(tmp_path_factory) -> Path:
    """Both 2-process runs (plain and augmented) in one torchrun launch: starting the ranks costs more
    than the runs. Under `pytest -n 2 --dist loadgroup` this file's group runs on one worker, so once."""
    out = tmp_path_factory.mktemp("ddp")
    two_ranks(out, "plain", "augmented")
    return out


def rank_states(out: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(out / f"rank{r}.safetensors") for r in (0, 1)]


@pytest.mark.slow
def test_two_processes_distill_like_one(tmp_path, ranks_dir):
    ranks = rank_states(ranks_dir / "plain")
    expected = run(tmp_path / "single", 2 * PER_RANK_BATCH)
    assert "map.0.weight" in expected
    for name, value in expected.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], atol=0, rtol=0, msg=name)
        torch.testing.assert_close(ranks[0][name], value, atol=1e-5, rtol=0, msg=name)


@pytest.mark.slow
def test_perturbed_copies_train_in_step_across_processes(ranks_dir):
    """Each rank perturbs its own examples and runs the copies through the unwrapped student; their
    gradients still join DDP's average, so both ranks hold the same student, unlike before training."""
    ranks = rank_states(ranks_dir / "augmented")
    untrained = BagOfTokens(0).state_dict()
    for name, value in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], value, atol=0, rtol=0, msg=name)
    assert not torch.allclose(ranks[0]["student.embed.weight"], untrained["embed.weight"])
