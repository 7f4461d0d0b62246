"""The streaming safetensors writer produces files safetensors itself reads back exactly, from
tensors (any dtype, empty, non-contiguous) and from byte slices of another file."""

import torch
from safetensors.torch import load_file, save_file

from trimtune.core.io.safetensors_stream import slices_of, write


def test_round_trip_tensors_and_slices(tmp_path):
    torch.manual_seed(0)
    tensors = {
        "a": torch.randn(3, 5), "b.bf16": torch.randn(4, 4).to(torch.bfloat16), "c.t": torch.randn(6, 2).t(),
        "d.int": torch.arange(7), "e.empty": torch.zeros(0, 3), "f.bool": torch.rand(5) > 0.5,
    }
    write(tmp_path / "one.safetensors", tensors, metadata={"format": "pt"})
    back = load_file(tmp_path / "one.safetensors")
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k

    save_file({"x": torch.randn(100, 3), "y": torch.randn(9)}, tmp_path / "src.safetensors")
    slices = slices_of(tmp_path / "src.safetensors")
    write(tmp_path / "mixed.safetensors", {"y": slices["y"], "new": torch.ones(2), "x": slices["x"]})
    mixed, source = load_file(tmp_path / "mixed.safetensors"), load_file(tmp_path / "src.safetensors")
    assert torch.equal(mixed["x"], source["x"]) and torch.equal(mixed["y"], source["y"]) and torch.equal(mixed["new"], torch.ones(2))
