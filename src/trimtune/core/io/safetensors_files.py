"""Reading a safetensors file with an error that names it: safetensors' own errors (a corrupt or
too-large header, a truncated file) say what broke but not in which file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open


class UnreadableFileError(ValueError):
    """A safetensors file that is missing, damaged or not a safetensors file at all."""


def read_safetensors(path: str | os.PathLike, what: str = "safetensors file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of ``path``; ``what`` says what the file is for the message."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(f"{path} does not exist (expected a {what})")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise UnreadableFileError(f"{path} is not a readable {what} (corrupt, truncated or not safetensors): {err}") from err


INDEX = "model.safetensors.index.json"


def check_model_files(directory: str | os.PathLike) -> None:
    """Every shard of a safetensors model directory opens (whole header, file not truncated) and holds
    the tensors its index maps to it. Run before a loader whose own error would not name the file."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    keys = {shard.name: _keys(shard) for shard in sorted(directory.glob("*.safetensors"))}
    index = directory / INDEX
    if not index.is_file():
        return
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise UnreadableFileError(f"{index} is not a readable index (JSON with a weight_map of tensor -> shard): {err}") from err
    for key, shard in weight_map.items():
        if key not in keys.get(shard, ()):
            where = "which does not hold it" if shard in keys else "which does not exist"
            raise UnreadableFileError(f"{index} maps {key} to {shard}, {where}; the index does not belong to these shards")


def _keys(path: Path) -> set[str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return set(handle.keys())
    except Exception as err:  # safetensors' own error types, none naming the file
        raise UnreadableFileError(f"{path} is not a readable safetensors file (corrupt, truncated or not safetensors): {err}") from err
