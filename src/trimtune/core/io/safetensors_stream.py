"""Write a safetensors file piece by piece, without ever holding its whole content a second time.

``safetensors.torch.save_file`` turns every tensor into a ``bytes`` copy before writing, so saving a
200 MB block costs 400 MB. Here each tensor's memory is written straight to the file (a
``memoryview`` of the tensor, no copy), and tensors that pass through unchanged are copied from the
input file in chunks (``copy_from``), never loaded at all. The format is the documented one: an
8-byte little-endian header length, a JSON header (dtype, shape, byte offsets into the data section,
padded with spaces to a multiple of 8), then the tensors' bytes back to back with no holes.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
_CHUNK = 16 << 20


@dataclass
class FileSlice:
    """A tensor stored in an existing safetensors file: its header entry and where its bytes are."""

    path: Path
    dtype: str
    shape: list[int]
    start: int  # absolute byte offset in the file
    length: int


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """(header without ``__metadata__``, absolute offset of the data section)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def slices_of(path: str | os.PathLike) -> dict[str, FileSlice]:
    header, base = read_header(path)
    return {
        name: FileSlice(Path(path), entry["dtype"], entry["shape"], base + entry["data_offsets"][0],
                        entry["data_offsets"][1] - entry["data_offsets"][0])
        for name, entry in header.items()
    }


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def write(path: str | os.PathLike, items: dict[str, torch.Tensor | FileSlice], metadata: dict[str, str] | None = None) -> None:
    """Write ``items`` (tensors, or slices of other safetensors files) as one safetensors file."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, item in items.items():
        if isinstance(item, FileSlice):
            dtype, shape, length = item.dtype, list(item.shape), item.length
        else:
            if item.dtype not in DTYPES:
                raise TypeError(f"{name}: dtype {item.dtype} cannot be written to safetensors")
            dtype, shape, length = DTYPES[item.dtype], list(item.shape), item.numel() * item.element_size()
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + length]}
        offset += length
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for item in items.values():
            if isinstance(item, FileSlice):
                _copy(item, out)
            else:
                out.write(_bytes_of(item))


def _copy(item: FileSlice, out) -> None:
    with open(item.path, "rb") as f:
        f.seek(item.start)
        left = item.length
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise OSError(f"{item.path} ends before the tensor bytes its header promises")
            out.write(chunk)
            left -= len(chunk)
