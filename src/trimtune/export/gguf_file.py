"""A causal LM in memory -> one GGUF file llama.cpp loads: settings, tokenizer, tensors.

Everything that can be refused is checked first (``check_gguf_export``): the architecture, every
tensor's GGUF name, the tokenizer, the output type. The file is then written to a temporary sibling
and renamed into place (``core.io.atomic``), so an interrupted export leaves nothing at ``path``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import torch
from torch import nn

from ..core.io.atomic import atomic_path
from .errors import ExportError
from .gguf_architectures import GgufArchitecture, gguf_architecture
from .gguf_types import encode, file_type, output_type
from .gguf_vocab import add_tokenizer, check_tokenizer

MARKER_KEY = "trimtune.export"  # in the file's metadata: --overwrite replaces only a file trimtune wrote


def _named_tensors(model: nn.Module, architecture: GgufArchitecture) -> list[tuple[str, str, torch.Tensor]]:
    """(GGUF name, Hugging Face name, tensor) for every parameter. A tied output head is the embedding's own
    parameter, which ``named_parameters`` lists once: llama.cpp then uses the embedding as the head."""
    names = gguf.TensorNameMap(architecture.arch, model.config.num_hidden_layers)  # GPT-2's config maps it to n_layer
    found, unplaced = [], []
    for name, param in model.named_parameters():  # parameters only: buffers (rotary tables, masks) are recomputed
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target:
            found.append((target, name, param.detach()))
        else:
            unplaced.append(name)
    if unplaced:
        raise ExportError(f"{len(unplaced)} tensor(s) have no place in GGUF's {architecture.name} architecture "
                          f"(e.g. {unplaced[0]}); llama.cpp would not run them")
    return found


def check_gguf_export(model: nn.Module, tokenizer, outtype: str = "f16") -> None:
    """Refuse, before anything is written, what a GGUF file cannot hold (the error names why)."""
    architecture = gguf_architecture(model)
    output_type(outtype)
    check_tokenizer(tokenizer, model.config.vocab_size)
    _named_tensors(model, architecture)


def write_gguf(model: nn.Module, tokenizer, path: str | os.PathLike, outtype: str = "f16", record: dict | None = None) -> Path:
    """Write ``model`` (a plain, merged causal LM) and ``tokenizer`` to ``path``; ``record`` is stored
    under ``trimtune.export`` (what the file was made from). Returns ``path``."""
    check_gguf_export(model, tokenizer, outtype)
    architecture, qtype, config = gguf_architecture(model), output_type(outtype), model.config
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, architecture.name)
        writer.add_name(Path(config.name_or_path).name if getattr(config, "name_or_path", "") else path.stem)
        writer.add_file_type(file_type(qtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string(MARKER_KEY, json.dumps(record or {}, sort_keys=True))
        architecture.settings(config, writer)
        add_tokenizer(writer, tokenizer, config.vocab_size)
        for target, name, tensor in _named_tensors(model, architecture):
            data, data_type = encode(architecture.tensor(name, tensor.float(), config).numpy(), qtype)
            writer.add_tensor(target, data, raw_dtype=data_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def is_trimtune_gguf(path: str | os.PathLike) -> bool:
    try:
        return MARKER_KEY in gguf.GGUFReader(path).fields
    except Exception:  # not a GGUF file at all
        return False
