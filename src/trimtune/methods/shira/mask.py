"""Which entries of a weight SHiRA trains: peft's random mask, drawn the same way so a seed gives peft's entries."""

from __future__ import annotations

import torch


def random_entries(out_features: int, in_features: int, count: int, seed: int | None) -> torch.Tensor:
    """(2, count) int32 (row, column) indices of ``count`` entries of an out × in weight, in row-major order.

    As peft's ``random_mask``: the first ``count`` of a ``randperm`` over the flattened weight from a fresh
    generator (seeded when ``seed`` is given, else at torch's default seed, so every layer draws alike);
    peft then reads them back from the mask with ``torch.where``, hence the sorted order."""
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    flat = torch.randperm(out_features * in_features, generator=generator)[:count].sort().values
    return torch.stack([flat // in_features, flat % in_features]).to(torch.int32)
