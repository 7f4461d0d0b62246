"""The run commands with checkpoints: exact resume through `--resume`, a checkpoint of another
recipe refused, CSV metrics, and 2 processes (torchrun, gloo) ending where 1 process does."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_cli import SRC

from trimtune import cli

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "reviews.csv"
# The tests share one 1-process run (one_process_run): under `pytest -n 2 --dist loadgroup` the group runs
# on one worker, so that run happens once.
pytestmark = pytest.mark.xdist_group("cli_resume")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """A tiny BERT (no dropout, so runs can be compared exactly) saved with MiniLM's tokenizer,
    LoRA on the 12 example reviews: 8 train / 4 eval, global batch 4, 2 epochs = 4 steps."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from trimtune.models import minilm_path

    root = tmp_path_factory.mktemp("resume")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(config).save_pretrained(root / "bert")
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(root / "bert")
    raw = {
        "model": {"path": str(root / "bert")},
        "data": {"train": str(DATA), "eval_fraction": 0.34, "batch_size": 4, "max_length": 24},
        "method": {"type": "lora", "r": 4, "alpha": 8, "targets": "query|value", "modules_to_save": ["classifier"]},
        "train": {"epochs": 2, "lr": 0.01, "checkpoint_every": 1, "keep_checkpoints": 3, "log_every": 1},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, recipe) -> Path:
    """The recipe's run in this process, uninterrupted: what a resumed run and 2 processes must end as."""
    out = tmp_path_factory.mktemp("one") / "run"
    assert cli.main(["tune", str(recipe), "--out", str(out), "--quiet"]) == 0
    return out


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0)


def test_resume_ends_like_an_uninterrupted_run(tmp_path, recipe, one_process_run, capsys):
    full, cut = one_process_run, tmp_path / "cut"
    rows = list(csv.DictReader((full / "metrics.csv").open()))
    assert {r["name"] for r in rows if r["split"] == "train"} >= {"loss", "lr"} and max(int(r["step"]) for r in rows) == 4
    steps = sorted(p.name for p in (full / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert len(steps) == 3 and steps[-1].endswith("4")

    shutil.copytree(full, cut)  # as if killed after step 2: later checkpoints and outputs never written
    for name in steps[1:]:
        shutil.rmtree(cut / "checkpoints" / name)
    shutil.rmtree(cut / "adapter")
    capsys.readouterr()
    assert cli.main(["tune", str(recipe), "--out", str(cut), "--resume", "--quiet"]) == 0
    assert_same(adapter(cut), adapter(full), atol=1e-6)

    code = cli.main(["tune", str(recipe), "--out", str(cut), "--resume", "--set", "train.lr=0.5", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "CheckpointMismatchError" in err and "lr" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["tune", str(recipe), "--out", str(tmp_path / "new"), "--resume"]) == 1
    assert "is not a trimtune run directory" in capsys.readouterr().err


# The two launchers the README and docs name; each starts 2 CPU processes that join one gloo group.
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # --multi_gpu picks accelerate's torch.distributed launcher, which also runs without GPUs (gloo);
    # --cpu would need mpirun for more than one process and silently runs one. The other flags are
    # ones accelerate warns about when left to defaults.
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_end_like_one(tmp_path, recipe, one_process_run, launcher):
    one, two = one_process_run, tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(tmp_path / "hf")}  # no user accelerate config file can change the launch
    command = LAUNCHERS[launcher] + ["-m", "trimtune", "tune", str(recipe), "--out", str(two), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("result: ") == 1  # rank 0 speaks
    assert json.loads((two / "summary.json").read_text())["processes"] == 2  # not 1 process by mistake
    assert json.loads((one / "summary.json").read_text())["processes"] == 1
    assert_same(adapter(two), adapter(one), atol=1e-5)
