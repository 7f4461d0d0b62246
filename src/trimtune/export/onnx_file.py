"""A model in memory -> one ONNX file, traced by PyTorch's dynamo exporter (``torch.export`` underneath).

The exported graph takes the model's own inputs by name and returns one output: a Hugging Face
model's ``logits`` (a bare encoder's ``last_hidden_state``), or a plain module's output. Dimension 0 of every input is the batch, and dimension
1 of a 2-D integer input (token ids, attention mask) the sequence: both stay dynamic in the graph.
Written to a temporary sibling and renamed, like every trimtune output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..core.io.atomic import atomic_path
from .errors import ExportError

MARKER_KEY = "trimtune.export"  # in the file's metadata_props: --overwrite replaces only a file trimtune wrote


def _main_output(out) -> tuple[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return "output", out
    if getattr(out, "logits", None) is not None:
        return "logits", out.logits
    name = next(iter(out.keys()))  # a Hugging Face ModelOutput's first field (an encoder's last_hidden_state)
    return name, out[name]


class _MainOutput(nn.Module):
    """The model with named inputs in a fixed order and its main output as the one output."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        return _main_output(self.model(**dict(zip(self.names, inputs))))[1]


def dynamic_axes(inputs: dict[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    axes = {}
    for name, x in inputs.items():
        axes[name] = {0: "batch"}
        if x.dim() == 2 and not x.is_floating_point():
            axes[name][1] = "sequence"
    return axes


def output_of(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
    """(name, tensor) of the output the exported graph returns, computed by PyTorch."""
    with torch.no_grad():
        return _main_output(model.eval()(**inputs))


def write_onnx(model: nn.Module, inputs: dict[str, torch.Tensor], path: str | os.PathLike, record: dict | None = None,
               check=None) -> Path:
    """Export ``model`` traced on ``inputs`` (example tensors by forward-argument name) to ``path``.
    ``check(tmp_path)`` runs on the finished file before it is renamed into place (a runtime's check)."""
    import onnx  # optional dependencies (pip install "trimtune[deploy]"): imported only when exporting

    wrapped = _MainOutput(model, list(inputs)).eval()
    try:
        program = torch.onnx.export(wrapped, tuple(inputs.values()), dynamo=True, input_names=list(inputs),
                                    output_names=[output_of(model, inputs)[0]], dynamic_shapes={"inputs": tuple(dynamic_axes(inputs).values())},
                                    external_data=False, verbose=False)
    except Exception as err:  # torch.export names the operation it could not trace
        raise ExportError(f"torch.onnx.export could not trace {type(model).__name__}: {str(err).splitlines()[0]}") from err
    path = Path(path)
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
        proto = onnx.load(tmp)
        onnx.helper.set_model_props(proto, {MARKER_KEY: json.dumps(record or {}, sort_keys=True)})
        onnx.save(proto, tmp)
        if check is not None:
            check(tmp)
    return path


def is_trimtune_onnx(path: str | os.PathLike) -> bool:
    try:
        import onnx

        return any(p.key == MARKER_KEY for p in onnx.load(path, load_external_data=False).metadata_props)
    except Exception:  # not an ONNX file at all
        return False
