"""Reading a safetensors file with an error that names it: safetensors' own errors (a corrupt or
too-large header, a truncated file) say what broke but not in which file."""

from __future__ import annotations

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
