"""Per-row selection: in each row, the ``quota`` lowest-scoring surviving entries (Wanda's comparison groups).

Rows are independent, so they are sorted a few at a time: the int64 sort indices, the float copy of
the scores and the take-mask exist for one chunk of about a million entries (~8 MB of indices)
instead of for the whole layer (a 5632 x 2048 layer would need ~370 MB of int64 rank tensors at
once). The choice is the same as one stable sort of every row: lowest score first, ties by position,
dead entries (scored -inf) first.
"""

from __future__ import annotations

import torch

CHUNK_ENTRIES = 1 << 20


def lowest_per_row(scores: torch.Tensor, alive: torch.Tensor, quota: torch.Tensor, chunk_entries: int = CHUNK_ENTRIES) -> torch.Tensor:
    """Bool (rows, cols): True on the ``quota[r]`` lowest entries of each row ``r``, counting the row's dead
    entries first (``quota`` includes them), ties broken by column order; only alive entries are marked."""
    rows, cols = scores.shape
    chosen = torch.zeros(rows, cols, dtype=torch.bool)
    step = max(1, chunk_entries // max(cols, 1))
    positions = torch.arange(cols)
    for start in range(0, rows, step):
        part = slice(start, start + step)
        masked = scores[part].float().masked_fill(~alive[part], -float("inf"))
        order = masked.argsort(dim=1, stable=True)
        take = positions < quota[part].unsqueeze(1)  # the first quota[r] places of row r's order
        chosen[part].scatter_(1, order, take)
    return chosen & alive
