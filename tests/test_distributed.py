"""Data-parallel training on torch.distributed: 2 CPU processes (gloo, started by torchrun) end with
the adapter 1 process gets from the same global batches."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ddp_worker import PER_RANK_BATCH, final_state, run
from safetensors.torch import load_file

import trimtune as tt
from trimtune.training.distributed import init_distributed, is_main_process, unwrap_model

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "tests" / "_ddp_worker.py"), str(tmp_path / "ddp")]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]

    _, single = run(tmp_path / "single", 2 * PER_RANK_BATCH)  # one process, the same global batch
    expected = final_state(single)
    ranks = [load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in (0, 1)]
    saved = load_file(tt.latest_checkpoint(tmp_path / "ddp" / "ckpt") / "model.safetensors")
    assert ranks[0].keys() == expected.keys() and any(n.endswith("weight_mask") for n in expected)
    for name, value in expected.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], atol=0, rtol=0, msg=name)  # ranks agree exactly
        torch.testing.assert_close(ranks[0][name], value, atol=1e-5, rtol=0, msg=name)
        if name in saved:
            torch.testing.assert_close(saved[name], ranks[0][name], atol=0, rtol=0, msg=name)
    lora_b = [n for n in expected if "lora_B" in n]
    assert lora_b and all(name in saved for name in lora_b)
    assert sorted(p.name for p in (tmp_path / "ddp" / "ckpt").iterdir()) == ["step-00000004", "step-00000008"]


def test_single_process_without_launcher(monkeypatch, tiny_bert):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size) == (0, 1) and is_main_process()
    assert unwrap_model(tiny_bert) is tiny_bert


def test_world_size_without_rank_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="torchrun or accelerate launch"):
        init_distributed()
