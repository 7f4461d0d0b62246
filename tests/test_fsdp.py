"""FSDP2 (fully_shard on a CPU mesh, gloo, 2 processes started by torchrun): training equals 1 process
with the same global batch, and saved adapters hold every rank's shard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import trimtune as tt
from _fsdp_worker import PER_RANK_BATCH, build_base, build_model, expected_fill, train_run
from trimtune.training.fsdp import block_modules, embedding_units

ROOT = Path(__file__).resolve().parents[1]
ADAPTER_FILE = "adapter_model.safetensors"


def torchrun(*args: str, nproc: int = 2, timeout: int = 300, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert (finished.returncode == 0) == ok, finished.stderr[-4000:]
    return finished


def two_vs_one(method: str, arch: str, tmp_path: Path):
    """(2-process losses, 1-process losses, 2-process adapter dir, 1-process adapter dir, 1-process model)."""
    torchrun(str(ROOT / "tests" / "_fsdp_worker.py"), "train", method, arch, str(tmp_path / "two"))
    model, single = train_run(method, arch, tmp_path / "one", 2 * PER_RANK_BATCH)  # same global batch
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    return two, single, tmp_path / "two" / "adapter", tmp_path / "one" / "adapter", model


def assert_same_files(sharded: Path, single: Path, name: str = ADAPTER_FILE) -> None:
    a, b = load_file(sharded / name), load_file(single / name)
    assert a.keys() == b.keys() and a
    for key in b:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)


def test_lora_on_llama_two_processes_equal_one_and_the_file_loads_in_peft(tmp_path):
    from peft import PeftModel

    two, one, sharded, single, model = two_vs_one("lora", "llama", tmp_path)
    assert len(two) == len(one) == 4
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), atol=1e-5, rtol=0)
    assert_same_files(sharded, single)
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits
        peft_model = PeftModel.from_pretrained(build_base("llama"), str(sharded)).eval()
        torch.testing.assert_close(peft_model(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
        reloaded = build_base("llama")
        tt.load_adapter(reloaded, sharded)
        torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("method, arch", [
    ("ia3", "gpt2"), ("prefix", "llama"), ("lora", "bert"), ("lora", "llama+gc"), ("qlora", "llama"),
    ("bottleneck", "bert"), ("prompt", "gpt2"), ("p-tuning", "llama"), ("dora", "llama"), ("vera", "llama"),
])
def test_other_methods_two_processes_equal_one(tmp_path, method, arch):
    two, one, sharded, single, _ = two_vs_one(method, arch, tmp_path)
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), atol=1e-5, rtol=0)
    assert_same_files(sharded, single)


@pytest.mark.slow
def test_adalora_ranks_agree_on_the_rank_pattern_of_one_process(tmp_path):
    two, one, sharded, single, _ = two_vs_one("adalora", "llama", tmp_path)
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), atol=1e-5, rtol=0)
    patterns = [json.loads((d / "adapter_config.json").read_text())["rank_pattern"] for d in (sharded, single)]
    assert patterns[0] == patterns[1] and patterns[0]
    assert any(not all(keep) for keep in patterns[0].values())  # the budget did remove ranks
    assert_same_files(sharded, single)


@pytest.mark.slow
def test_diff_pruning_keeps_the_entries_of_one_process_and_fine_tunes_them_alike(tmp_path):
    two, one, sharded, single, _ = two_vs_one("diff", "bert", tmp_path)
    assert len(two) == len(one) == 6  # 4 dense steps with the L1 penalty, 2 on the kept entries
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), atol=1e-5, rtol=0)
    configs = [json.loads((d / "diff_config.json").read_text()) for d in (sharded, single)]
    assert configs[0]["kept"] == configs[1]["kept"] > 0
    a, b = load_file(sharded / "diff_model.safetensors"), load_file(single / "diff_model.safetensors")
    assert a.keys() == b.keys()
    for key in b:
        if key.endswith(".index"):
            assert torch.equal(a[key], b[key]), key  # the same kept indices
        else:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)


def test_saved_adapter_holds_every_ranks_shard(tmp_path):
    """accelerate #4206: a save that writes only rank 0's slice (or rank 0's slice everywhere) fails here."""
    torchrun(str(ROOT / "tests" / "_fsdp_worker.py"), "fill", "llama", str(tmp_path))
    fresh = build_model("lora", "llama")
    with torch.no_grad():
        for param in fresh.parameters():
            if param.requires_grad:
                param.zero_()
    tt.delete_adapter(fresh, "default")
    tt.load_adapter(fresh, tmp_path / "adapter")
    trainable = [(n, p) for n, p in fresh.named_parameters() if p.requires_grad]
    assert trainable
    for name, param in trainable:
        torch.testing.assert_close(param.detach(), expected_fill(param.shape, 2), atol=0, rtol=0, msg=name)
        assert (param < 2000).any() and (param >= 2000).any(), name  # both ranks' values arrived
    assert "weight_mask" in (tmp_path / "refused.txt").read_text()  # ranks with different masks were refused


def test_block_modules_finds_transformer_blocks_and_takes_a_given_class():
    llama = build_base("llama")
    assert [type(b).__name__ for b in block_modules(llama)] == ["LlamaDecoderLayer"] * 2
    assert len(block_modules(build_base("gpt2"))) == 2 and len(block_modules(build_base("bert"))) == 2
    mlps = block_modules(llama, [type(llama.model.layers[0].mlp)])
    assert len(mlps) == 2 and all(type(m).__name__ == "LlamaMLP" for m in mlps)


def test_embeddings_are_own_units_unless_tied():
    llama, gpt2 = build_base("llama"), build_base("gpt2")
    assert embedding_units(llama) == [llama.get_input_embeddings(), llama.get_output_embeddings()]
    assert embedding_units(gpt2) == []  # GPT-2 ties wte and lm_head: one parameter, so both stay in the root


def test_shard_model_without_process_group_is_refused():
    from trimtune.training.fsdp import shard_model

    with pytest.raises(tt.ConfigError, match="torchrun"):
        shard_model(build_model("lora", "llama"))



def checkpointed(ckpt: Path, out: Path, *flags: str, nproc: int = 2, ok: bool = True) -> tuple[list[float], dict]:
    torchrun(str(ROOT / "tests" / "_fsdp_worker.py"), "ckpt", str(ckpt), str(out), *flags, nproc=nproc, ok=ok)
    if not ok:
        return [], {}
    return json.loads((out / "losses.json").read_text()), load_file(out / "adapter" / ADAPTER_FILE)


def assert_same_run(run, reference, atol: float) -> None:
    losses, adapter = run
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference[0]), atol=atol, rtol=0)
    assert adapter.keys() == reference[1].keys()
    for key, value in reference[1].items():
        torch.testing.assert_close(adapter[key], value, atol=atol, rtol=0, msg=key)


@pytest.mark.slow
def test_kill_9_of_one_rank_then_resume_and_resume_on_other_world_sizes(tmp_path):
    """Sharded (DCP) checkpoints every 2 of 6 steps. kill -9 of rank 1 after step 5, resume on 2
    processes: exactly the uninterrupted run. The same checkpoint resumed by 1 process, and a
    1-process checkpoint resumed by 2, end within 1e-5 of it."""
    reference = checkpointed(tmp_path / "a" / "ckpt", tmp_path / "a")
    assert len(reference[0]) == 6
    assert sorted(p.name for p in (tmp_path / "a" / "ckpt").iterdir()) == ["step-00000004", "step-00000006"]
    assert len(list((tmp_path / "a" / "ckpt" / "step-00000004" / "sharded").glob("*.safetensors"))) == 2  # one per rank

    checkpointed(tmp_path / "b" / "ckpt", tmp_path / "b", "kill=5", ok=False)
    assert tt.latest_checkpoint(tmp_path / "b" / "ckpt").name == "step-00000004"
    shutil.copytree(tmp_path / "b" / "ckpt", tmp_path / "c" / "ckpt")
    assert_same_run(checkpointed(tmp_path / "b" / "ckpt", tmp_path / "b", "resume"), reference, atol=0)
    assert_same_run(checkpointed(tmp_path / "c" / "ckpt", tmp_path / "c", "resume", nproc=1), reference, atol=1e-5)  # 2 -> 1

    checkpointed(tmp_path / "d" / "ckpt", tmp_path / "d", "kill=5", nproc=1, ok=False)
    assert tt.latest_checkpoint(tmp_path / "d" / "ckpt").name == "step-00000004"
    assert_same_run(checkpointed(tmp_path / "d" / "ckpt", tmp_path / "d", "resume"), reference, atol=1e-5)  # 1 -> 2
