"""Calibration samples from a local text file: ``nsamples`` random windows of ``seqlen`` tokens
(seeded), as the reference codes draw random segments of C4."""

from __future__ import annotations

import torch

from ...core.io.text_tokens import tokenize_file


def check_counts(nsamples: int, seqlen: int) -> None:
    if isinstance(nsamples, bool) or not isinstance(nsamples, int) or nsamples < 1:
        raise ValueError(f"nsamples must be an integer >= 1 (calibration windows to draw), got {nsamples!r}")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise ValueError(f"seqlen must be an integer >= 2 (tokens per calibration window), got {seqlen!r}")


def calibration_samples(path, tokenizer, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """(nsamples, seqlen) token ids drawn from random offsets of the file's token stream."""
    check_counts(nsamples, seqlen)
    ids = tokenize_file(path, tokenizer)
    if len(ids) < seqlen:
        raise ValueError(f"calibration file {path} has {len(ids)} tokens, fewer than seqlen={seqlen}; use a longer file or a smaller seqlen")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seqlen + 1, (nsamples,), generator=generator)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])
