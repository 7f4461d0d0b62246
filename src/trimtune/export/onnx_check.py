"""An ONNX file checked by the runtime that will load it: onnxruntime's logits against PyTorch's."""

from __future__ import annotations

import os

import torch
from torch import nn

from .onnx_file import output_of


def onnxruntime_difference(path: str | os.PathLike, model: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """max |onnxruntime − PyTorch| over the exported output on ``inputs`` (any batch and sequence length)."""
    import onnxruntime  # optional dependency (pip install "trimtune[deploy]")

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    return float((torch.from_numpy(got) - output_of(model, inputs)[1]).abs().max())
