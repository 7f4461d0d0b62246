"""Streaming from a sharded directory gives bit-identical tensors to the in-memory run, the output is
a normal Hugging Face directory, and failures leave no output behind."""

import errno
import json

import pytest
import torch
from safetensors.torch import load_file

from trimtune.prune import make_permanent
from trimtune.prune.sequential import SequentialConfig, prune_sequential
from trimtune.prune.sequential import stream
from trimtune.prune.sequential.stream import prune_directory


def saved(model, path, parts=3):
    """save_pretrained, then the single file split into ``parts`` shards with an index."""
    from safetensors.torch import save_file

    model.save_pretrained(path)
    tensors = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    keys = sorted(tensors)
    weight_map = {}
    for i in range(parts):
        name = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {k: tensors[k] for k in keys[i::parts]}
        save_file(chunk, path / name, metadata={"format": "pt"})
        weight_map.update((k, name) for k in chunk)
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def output_tensors(out):
    index = json.loads((out / "model.safetensors.index.json").read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(out / shard))
    assert set(tensors) == set(index["weight_map"])
    return tensors


@pytest.mark.parametrize("arch,config", [("llama", SequentialConfig("sparsegpt", "2:4", blocksize=16)),
                                         ("llama", SequentialConfig("wanda", 0.5, owl=True, owl_m=2)),
                                         ("gpt2", SequentialConfig("sparsegpt", 0.5, blocksize=16))])
def test_streamed_equals_in_memory_and_reloads(arch, config, tiny_llama, tiny_gpt2, tmp_path):
    from transformers import AutoModelForCausalLM

    model = {"llama": tiny_llama, "gpt2": tiny_gpt2}[arch]
    source = saved(model, tmp_path / "in")
    assert len(list(source.glob("*.safetensors"))) > 1
    torch.manual_seed(5)
    samples = torch.randint(3, 100, (3, 20))
    out = tmp_path / "out"
    report = prune_directory(source, out, samples, config)

    memory = AutoModelForCausalLM.from_pretrained(source).eval()
    memory_report = prune_sequential(memory, samples, config)
    make_permanent(memory)
    assert report.to_dict() == memory_report.to_dict()
    expected = {k: v for k, v in memory.state_dict().items() if not k.endswith("weight_mask")}
    written = output_tensors(out)
    for key, tensor in written.items():
        assert torch.equal(tensor, expected[key]), key  # bit-identical
    assert json.loads((out / "sparsity_report.json").read_text()) == report.to_dict()
    assert (out / "config.json").is_file()

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=samples).logits, memory(input_ids=samples).logits)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp dir left


def test_disk_full_leaves_no_output(tiny_llama, tmp_path, monkeypatch):
    source = saved(tiny_llama, tmp_path / "in")
    real = stream.write_shard
    calls = []

    def full(path, items, metadata=None):
        calls.append(path)
        if len(calls) == 3:  # a block shard, after the first ones were written
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, items, metadata)

    monkeypatch.setattr(stream, "write_shard", full)
    with pytest.raises(OSError, match="no space left on the device while writing shard model-00003"):
        prune_directory(source, tmp_path / "out", torch.randint(3, 100, (2, 16)), SequentialConfig("wanda", 0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_refuses_existing_out_and_unknown_layout(tiny_llama, tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    source = saved(tiny_llama, tmp_path / "in")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken already exists"):
        prune_directory(source, tmp_path / "taken", torch.ones(1, 8, dtype=torch.long), SequentialConfig())
    OPTForCausalLM(OPTConfig(hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2, vocab_size=50,
                             word_embed_proj_dim=16)).save_pretrained(tmp_path / "opt")
    with pytest.raises(ValueError, match="known types: bert, gpt2, llama, mistral, qwen2, roberta"):
        prune_directory(tmp_path / "opt", tmp_path / "out", torch.ones(1, 8, dtype=torch.long), SequentialConfig())
    with pytest.raises(ValueError, match="seqlen 200 is longer than the model's 128 positions"):
        prune_directory(source, tmp_path / "out", torch.ones(1, 200, dtype=torch.long), SequentialConfig())
    assert not (tmp_path / "out").exists()


def test_streamed_magnitude_reads_no_calibration_and_equals_in_memory(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    source = saved(tiny_llama, tmp_path / "in")
    config = SequentialConfig("magnitude", 0.5)
    report = prune_directory(source, tmp_path / "out", None, config)
    memory = AutoModelForCausalLM.from_pretrained(source).eval()
    assert prune_sequential(memory, None, config).to_dict() == report.to_dict()
    make_permanent(memory)
    expected = {k: v for k, v in memory.state_dict().items() if not k.endswith("weight_mask")}
    for key, tensor in output_tensors(tmp_path / "out").items():
        assert torch.equal(tensor, expected[key]), key
    with pytest.raises(ValueError, match="calibration samples must be a LongTensor"):
        prune_directory(source, tmp_path / "out2", None, SequentialConfig("sparsegpt", 0.5))
    assert not (tmp_path / "out2").exists()
