"""`distributed: {strategy: fsdp}` in a recipe: `torchrun -m trimtune tune` shards the model with FSDP2,
ends where 1 process does, and its sharded checkpoints resume on another number of processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from trimtune import cli
from trimtune.recipes.load import RecipeError, load_recipe
from test_cli import SRC
from test_cli_resume import LAUNCHERS, adapter, assert_same, recipe  # noqa: F401  (recipe is a fixture)

FSDP = ["--set", "distributed.strategy=fsdp"]
# The two 2-process tests share one torchrun run (by_torchrun): under `pytest -n 2 --dist loadgroup` the
# group runs on one worker, so that run happens once.
pytestmark = pytest.mark.xdist_group("fsdp_cli")


def torchrun_tune(recipe_path, out, *extra, nproc=2, launcher=None):
    """``trimtune tune`` with strategy fsdp on ``nproc`` processes started by torchrun, or by one of
    ``test_cli_resume.LAUNCHERS`` (2 processes)."""
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(out.parent / "hf")}  # no user accelerate config file can change the launch
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    start = LAUNCHERS[launcher] if launcher else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    command = [*start, "-m", "trimtune", "tune", str(recipe_path), "--out", str(out), "--quiet", *FSDP, *extra]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def by_torchrun(tmp_path_factory, recipe):  # noqa: F811
    """The recipe's run on 2 processes started by torchrun: both tests compare with it."""
    out = tmp_path_factory.mktemp("fsdp_cli") / "torchrun"
    torchrun_tune(recipe, out)
    return out


@pytest.mark.slow
def test_fsdp_recipe_on_two_processes_ends_like_one_and_resumes_on_one(tmp_path, recipe, by_torchrun):  # noqa: F811
    one, two, cut = tmp_path / "one", by_torchrun, tmp_path / "cut"
    assert cli.main(["tune", str(recipe), "--out", str(one), "--quiet", *FSDP]) == 0
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    assert_same(adapter(two), adapter(one), atol=1e-5)
    steps = sorted(p.name for p in (two / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert (two / "checkpoints" / steps[-1] / "sharded").is_dir()  # DCP shards

    shutil.copytree(two, cut)  # as if killed after step 2; resumed by 1 process
    for name in steps[1:]:
        shutil.rmtree(cut / "checkpoints" / name)
    shutil.rmtree(cut / "adapter")
    assert cli.main(["tune", str(recipe), "--out", str(cut), "--resume", "--quiet", *FSDP]) == 0
    assert_same(adapter(cut), adapter(two), atol=1e-5)


@pytest.mark.slow
def test_fsdp_recipe_launched_by_accelerate_ends_like_torchrun(tmp_path, recipe, by_torchrun):  # noqa: F811
    """accelerate launch (its torch.distributed launcher, gloo without GPUs) starts the processes and
    nothing more: trimtune shards (the checkpoints are DCP shards, one file per rank) and the adapter
    is the one torchrun's run writes."""
    by_accelerate = tmp_path / "accelerate"
    torchrun_tune(recipe, by_accelerate, launcher="accelerate")
    assert json.loads((by_accelerate / "summary.json").read_text())["processes"] == 2
    last = max(p for p in (by_accelerate / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert len(list((last / "sharded").glob("*.safetensors"))) == 2
    assert_same(adapter(by_accelerate), adapter(by_torchrun), atol=0)


def test_fsdp_strategy_refuses_prune_and_whole_model_runs(recipe):  # noqa: F811
    with pytest.raises(RecipeError, match="strategy 'fsdp' trains adapters"):
        load_recipe(recipe, ["distributed.strategy=fsdp", "prune.sparsity=0.5"])
    with pytest.raises(RecipeError, match="distributed.strategy"):
        load_recipe(recipe, ["distributed.strategy=zero3"])
