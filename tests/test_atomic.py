"""Atomic writes: a failure mid-write leaves the previous file (or directory) as it was."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import trimtune as tt
from trimtune.core.io import atomic
from trimtune.core.io import peft_files as adapter_files


def _no_temp_files(directory):
    return not [p for p in directory.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]


def test_write_json_and_safetensors_replace_the_file(tmp_path):
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    atomic.write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    weight = torch.arange(6.0).view(2, 3)
    atomic.write_safetensors(tmp_path / "t.safetensors", {"w": weight.t(), "v": weight[0]}, {"k": "v"})  # views
    loaded = load_file(tmp_path / "t.safetensors")
    assert torch.equal(loaded["w"], weight.t()) and torch.equal(loaded["v"], weight[0])
    assert _no_temp_files(tmp_path)


def test_a_failure_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "t.safetensors"
    atomic.write_safetensors(target, {"w": torch.ones(4)})
    before = target.read_bytes()

    def half_then_crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x10\x00\x00\x00partial")  # some bytes reach the disk, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "save_file", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_safetensors(target, {"w": torch.zeros(4)})
    assert target.read_bytes() == before
    assert _no_temp_files(tmp_path)


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.atomic_directory(tmp_path / "d") as tmp:
            atomic.write_bytes(tmp / "one", b"1")
            raise RuntimeError("crash before the second file")
    assert not (tmp_path / "d").exists() and _no_temp_files(tmp_path)
    with atomic.atomic_directory(tmp_path / "d") as tmp:
        atomic.write_bytes(tmp / "one", b"1")
    (tmp_path / "d" / "README").write_text("mine")
    with atomic.atomic_directory(tmp_path / "d") as tmp:
        atomic.write_bytes(tmp / "one", b"2")
    assert (tmp_path / "d" / "one").read_bytes() == b"2"
    assert (tmp_path / "d" / "README").read_text() == "mine"  # files not rewritten are kept


def test_save_adapter_failing_midway_keeps_the_previous_adapter(tiny_bert, tmp_path, monkeypatch, token_ids):
    tt.apply(tiny_bert, tt.LoraConfig(r=2, targets="query"))
    tt.save_adapter(tiny_bert, tmp_path / "a")
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    with torch.no_grad():
        next(p for p in tiny_bert.parameters() if p.requires_grad).add_(1.0)

    def crash(path, obj):
        raise OSError("killed while writing adapter_config.json")

    monkeypatch.setattr(adapter_files, "write_json", crash)  # the tensors are already written by then
    with pytest.raises(OSError, match="killed"):
        tt.save_adapter(tiny_bert, tmp_path / "a")
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before
    assert _no_temp_files(tmp_path)
