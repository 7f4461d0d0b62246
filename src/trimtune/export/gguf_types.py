"""Output types of a GGUF file, as the ``gguf`` package names them, and tensors encoded in them.

A type is any of ``gguf.GGMLQuantizationType`` whose blocks the package itself can quantise
(``gguf.quants``: f32, f16, bf16, q8_0, q4_0, ...). K-quants and i-quants are known to gguf but
quantised only by llama.cpp's ``llama-quantize``, which takes our f16 file.
"""

from __future__ import annotations

import gguf
import numpy as np

from .errors import ExportError

FLOAT_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)


def _writable(qtype: gguf.GGMLQuantizationType) -> bool:
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    try:
        gguf.quants.quantize(np.zeros((1, block), dtype=np.float32), qtype)
    except (NotImplementedError, gguf.quants.QuantError, TypeError, ValueError):
        return False
    return True


def output_type(name: str) -> gguf.GGMLQuantizationType:
    """``"q8_0"`` -> ``GGMLQuantizationType.Q8_0``; refused when gguf does not know the name or cannot write it."""
    qtype = gguf.GGMLQuantizationType.__members__.get(name.upper())
    if qtype is None:
        known = ", ".join(t.name.lower() for t in gguf.GGMLQuantizationType if _writable(t))
        raise ExportError(f"--outtype {name!r} is not a type the gguf package knows; it writes: {known}")
    if not _writable(qtype):
        raise ExportError(f"the gguf package knows {name!r} but cannot quantise to it (only llama.cpp's llama-quantize "
                          "can): export with --outtype f16, then run `llama-quantize FILE.gguf OUT.gguf "
                          f"{name.upper()}`")
    return qtype


def file_type(qtype: gguf.GGMLQuantizationType) -> gguf.LlamaFileType:
    """The file-wide type llama.cpp shows for a file whose large tensors are ``qtype``."""
    return gguf.LlamaFileType.ALL_F32 if qtype == gguf.GGMLQuantizationType.F32 else gguf.LlamaFileType[f"MOSTLY_{qtype.name}"]


def encode(array: np.ndarray, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """(data, its type): vectors (norms, biases) stay f32 as llama.cpp's converter keeps them; a matrix whose
    rows do not split into ``qtype``'s blocks (a shrunk width, say 24 for q8_0's 32) is written f16."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim < 2 or qtype == gguf.GGMLQuantizationType.F32:
        return array, gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if array.shape[-1] % block:
        qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16), qtype
    return gguf.quants.quantize(array, qtype), qtype
