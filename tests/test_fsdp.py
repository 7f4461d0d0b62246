"""FSDP2 (fully_shard on a CPU mesh, gloo, 2 processes started by torchrun): training equals 1 process
with the same global batch, and saved adapters hold every rank's shard."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import trimtune as tt
from _fsdp_worker import PER_RANK_BATCH, build_base, build_model, expected_fill, train_run
from trimtune.training.fsdp import block_modules, embedding_units

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "_fsdp_worker.py")
ADAPTER_FILE = "adapter_model.safetensors"
OTHER_METHODS = [
    ("ia3", "gpt2"), ("prefix", "llama"), ("lora", "bert"), ("lora", "llama+gc"), ("lora", "llama+units"), ("adalora", "llama+units"), ("qlora-512", "llama+units"), ("lora", "llama+meta"),
    ("bottleneck", "bert"), ("prompt", "gpt2"), ("p-tuning", "llama"), ("dora", "llama"), ("vera", "llama"),
]
TRAINED = [("lora", "llama"), *OTHER_METHODS, ("qlora", "llama"), ("adalora", "llama"), ("diff", "bert")]
# Every test of this file shares the one 2-process launch below: under `pytest -n 2 --dist loadgroup`
# the group runs on one worker, so the launch happens once.
pytestmark = pytest.mark.xdist_group("fsdp")


def torchrun(*args: str, nproc: int = 2, timeout: int = 300, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert (finished.returncode == 0) == ok, finished.stderr[-4000:]
    return finished


@dataclass
class Batch:
    """Outputs of several worker commands run in one torchrun launch (``_fsdp_worker.py batch``)."""

    root: Path
    stderr: str

    def output(self, name: str) -> Path:
        """The directory a command wrote, after checking that the command did not fail."""
        path = self.root / name
        failed = [line for line in self.stderr.splitlines() if line.startswith("batch command failed:") and str(path) in line.split()]
        assert not failed and path.is_dir(), f"2-process run {name} failed:\n{self.stderr[-4000:]}"
        return path


def batch(root: Path, commands: list[list[str]], nproc: int = 2, ok: bool = True) -> Batch:
    """Run the worker's ``commands`` (each writing under ``root``) in one launch: starting the ranks costs
    far more than each tiny run."""
    finished = torchrun(WORKER, "batch", *(shlex.join(c) for c in commands), nproc=nproc, timeout=900, ok=ok)
    return Batch(root, finished.stderr)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> Batch:
    """Every 2-process run of this file that is not killed: the checkpointed reference, each method's
    training (TRAINED) and the shard-filling save, in one torchrun."""
    root = tmp_path_factory.mktemp("fsdp")
    commands = [["ckpt", str(root / "ckpt" / "ckpt"), str(root / "ckpt")]]
    commands += [["train", method, arch, str(root / f"{method}-{arch}")] for method, arch in TRAINED]
    commands.append(["fill", "llama", str(root / "fill")])
    return batch(root, commands)


def two_vs_one(method: str, arch: str, tmp_path: Path, runs: Batch):
    """(2-process losses, 1-process losses, 2-process adapter dir, 1-process adapter dir, 1-process model)."""
    two_dir = runs.output(f"{method}-{arch}")
    model, single = train_run(method, arch, tmp_path / "one", 2 * PER_RANK_BATCH)  # same global batch
    two = json.loads((two_dir / "losses.json").read_text())
    return two, single, two_dir / "adapter", tmp_path / "one" / "adapter", model


def assert_same_files(sharded: Path, single: Path, name: str = ADAPTER_FILE) -> None:
    a, b = load_file(sharded / name), load_file(single / name)
    assert a.keys() == b.keys() and a
    for key in b:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)


def test_lora_on_llama_two_processes_equal_one_and_the_file_loads_in_peft(tmp_path, two_process_runs):
    from peft import PeftModel

    two, one, sharded, single, model = two_vs_one("lora", "llama", tmp_path, two_process_runs)
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
@pytest.mark.parametrize("method, arch", OTHER_METHODS)
def test_other_methods_two_processes_equal_one(tmp_path, method, arch, two_process_runs):
    two, one, sharded, single, _ = two_vs_one(method, arch, tmp_path, two_process_runs)
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), atol=1e-5, rtol=0)
    assert_same_files(sharded, single)


@pytest.mark.slow
def test_qlora_shards_its_4bit_base_and_two_processes_equal_one(tmp_path, two_process_runs):
    """The packed codes and block scales of the 4-bit base are split between the ranks (each holds
    half, padding aside; no whole Params4bit left), training equals 1 process, and the adapter loads
    on a 1-process 4-bit base (same fingerprint) with the 1-process model's logits."""
    from _fsdp_worker import build_base

    two, one, sharded, single, model = two_vs_one("qlora", "llama", tmp_path, two_process_runs)
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), atol=1e-5, rtol=0)
    assert_same_files(sharded, single)
    records = [json.loads((sharded.parent / f"four_bit_rank{r}.json").read_text()) for r in range(2)]
    assert records[0]["tensors"].keys() == records[1]["tensors"].keys()
    assert len(records[0]["tensors"]) == 2 * 14  # codes and scales of 7 projections x 2 blocks
    total = sum(whole for _, whole in records[0]["tensors"].values())
    for record in records:
        assert record["whole_left"] == 0
        for name, (local, whole) in record["tensors"].items():
            assert local <= -(-whole // 2) + 16, name  # half, rounded up, plus FSDP2's row padding
        held = sum(local for local, _ in record["tensors"].values())
        assert 0.45 * total <= held <= 0.55 * total
        assert record["replicated"] < 0.1 * held  # what stays whole (nested scales) is small
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(5))
    reloaded = build_base("llama")
    tt.quantize_base(reloaded)
    tt.load_adapter(reloaded, sharded)  # checks the fingerprint: the sharded base describes itself as the whole one
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_adalora_ranks_agree_on_the_rank_pattern_of_one_process(tmp_path, two_process_runs):
    two, one, sharded, single, _ = two_vs_one("adalora", "llama", tmp_path, two_process_runs)
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), atol=1e-5, rtol=0)
    patterns = [json.loads((d / "adapter_config.json").read_text())["rank_pattern"] for d in (sharded, single)]
    assert patterns[0] == patterns[1] and patterns[0]
    assert any(not all(keep) for keep in patterns[0].values())  # the budget did remove ranks
    assert_same_files(sharded, single)


@pytest.mark.slow
def test_diff_pruning_keeps_the_entries_of_one_process_and_fine_tunes_them_alike(tmp_path, two_process_runs):
    two, one, sharded, single, _ = two_vs_one("diff", "bert", tmp_path, two_process_runs)
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


def test_saved_adapter_holds_every_ranks_shard(two_process_runs):
    """accelerate #4206: a save that writes only rank 0's slice (or rank 0's slice everywhere) fails here."""
    filled = two_process_runs.output("fill")
    fresh = build_model("lora", "llama")
    with torch.no_grad():
        for param in fresh.parameters():
            if param.requires_grad:
                param.zero_()
    tt.delete_adapter(fresh, "default")
    tt.load_adapter(fresh, filled / "adapter")
    trainable = [(n, p) for n, p in fresh.named_parameters() if p.requires_grad]
    assert trainable
    for name, param in trainable:
        torch.testing.assert_close(param.detach(), expected_fill(param.shape, 2), atol=0, rtol=0, msg=name)
        assert (param < 2000).any() and (param >= 2000).any(), name  # both ranks' values arrived
    assert "weight_mask" in (filled / "refused.txt").read_text()  # ranks with different masks were refused
    refusal = (filled / "pruning_refused.txt").read_text()
    assert "prune.schedule" in refusal and "prune before sharding" in refusal


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



def checkpointed(out: Path) -> tuple[list[float], dict]:
    """(losses, adapter tensors) of a ``ckpt`` command that wrote to ``out``."""
    return json.loads((out / "losses.json").read_text()), load_file(out / "adapter" / ADAPTER_FILE)


def ckpt(run: Path, *flags: str) -> list[str]:
    return ["ckpt", str(run / "ckpt"), str(run), *flags]


def assert_same_run(run, reference, atol: float) -> None:
    losses, adapter = run
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference[0]), atol=atol, rtol=0)
    assert adapter.keys() == reference[1].keys()
    for key, value in reference[1].items():
        torch.testing.assert_close(adapter[key], value, atol=atol, rtol=0, msg=key)


@pytest.mark.slow
def test_kill_9_of_one_rank_then_resume_and_resume_on_other_world_sizes(tmp_path, two_process_runs):
    """Sharded (DCP) checkpoints every 2 of 6 steps. kill -9 of rank 1 after step 5, resume on 2
    processes: exactly the uninterrupted run. The same checkpoint resumed by 1 process, and a
    1-process checkpoint resumed by 2, end within 1e-5 of it."""
    uninterrupted = two_process_runs.output("ckpt")
    reference = checkpointed(uninterrupted)
    assert len(reference[0]) == 6
    assert sorted(p.name for p in (uninterrupted / "ckpt").iterdir()) == ["step-00000004", "step-00000006"]
    assert len(list((uninterrupted / "ckpt" / "step-00000004" / "sharded").glob("*.safetensors"))) == 2  # one per rank

    b, c, d = tmp_path / "b", tmp_path / "c", tmp_path / "d"
    torchrun(WORKER, *ckpt(b, "kill=5"), ok=False)
    assert tt.latest_checkpoint(b / "ckpt").name == "step-00000004"
    shutil.copytree(b / "ckpt", c / "ckpt")
    # One process: resume b's copy (2 -> 1), then start d and get killed after step 5 (so the launch fails).
    one = batch(tmp_path, [ckpt(c, "resume"), ckpt(d, "kill=5")], nproc=1, ok=False)
    assert_same_run(checkpointed(one.output("c")), reference, atol=1e-5)  # 2 -> 1
    assert tt.latest_checkpoint(d / "ckpt").name == "step-00000004"

    two = batch(tmp_path, [ckpt(b, "resume"), ckpt(d, "resume")])
    assert_same_run(checkpointed(two.output("b")), reference, atol=0)
    assert_same_run(checkpointed(two.output("d")), reference, atol=1e-5)  # 1 -> 2


@pytest.mark.parametrize(("quant_type", "double_quant"), [("nf4", True), ("fp4", False)])
def test_4bit_base_stored_plain_computes_the_same_and_keeps_its_fingerprint(quant_type, double_quant):
    """What shard_model does to a 4-bit base before sharding, in one process: same outputs, same
    gradients into the input, same fingerprint; the scales become a frozen parameter."""
    from trimtune.core.io.fingerprint import fingerprint
    from trimtune.core.plain_four_bit import ABSMAX
    from trimtune.training.fsdp import store_4bit_bases_plain

    model = build_base("llama")
    tt.apply(model, tt.QLoraConfig(r=4, init="gaussian", quant_type=quant_type, double_quant=double_quant))
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(5))
    before, print_before, counts_before = model(input_ids=ids).logits, fingerprint(model), tt.trainable_parameters(model)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    model(inputs_embeds=embeds).logits.sum().backward()
    grad_before = embeds.grad.clone()
    assert len(store_4bit_bases_plain(model)) == 14
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj.weight) is torch.nn.Parameter and q_proj.weight.dtype == torch.uint8
    assert not getattr(q_proj, ABSMAX).requires_grad and q_proj.quant_template.absmax is None
    torch.testing.assert_close(model(input_ids=ids).logits, before, atol=0, rtol=0)
    assert fingerprint(model) == print_before and tt.trainable_parameters(model) == counts_before
    embeds.grad = None
    model(inputs_embeds=embeds).logits.sum().backward()
    torch.testing.assert_close(embeds.grad, grad_before, atol=0, rtol=0)


def test_4bit_base_packed_for_the_cpu_kernel_is_refused_before_sharding():
    from trimtune.core.plain_four_bit import store_plain

    layer = build_model("qlora", "llama").model.layers[0].self_attn.q_proj
    layer.weight.quant_state.packing_format_for_cpu = True  # what pack_4bit_for_cpu leaves (needs AVX512-BF16 to do for real)
    with pytest.raises(ValueError, match="pack_4bit_for_cpu"):
        store_plain(layer)
