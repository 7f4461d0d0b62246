"""A local text file as one stream of token ids (calibration for pruning, perplexity evaluation)."""

from __future__ import annotations

from pathlib import Path

import torch


def tokenize_file(path, tokenizer) -> torch.Tensor:
    """All tokens of the file as one 1-D LongTensor (no special tokens added)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:  # python's message names the codec and offset, not the file
        raise ValueError(f"text file {path} is not UTF-8: byte {err.start} (0x{err.object[err.start]:02x}) {err.reason}; "
                         "save it as UTF-8") from None
    if not text.strip():
        raise ValueError(f"text file {path} is empty; it needs at least one window of text")
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)
