"""Adapter saving for the demo until ``trimtune.save_adapter`` lands on main; then this file goes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from safetensors.torch import save_file


def save_trainable(model, out_dir) -> str:
    """The trainable tensors as one safetensors file, written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp)
    os.replace(tmp, out / "adapter_model.safetensors")
    return str(out)
