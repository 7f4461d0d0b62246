"""Packing: short examples share fixed-length windows, with no attention across their boundaries.

Windows are filled best-fit-decreasing (longest example first, each into the fullest window it still
fits, ties to the older window), the order TRL's ``packing_strategy="bfd"`` gives, so the same data
makes the same windows. A batch of windows is laid end to end in one row (no padding at all), with
position ids that restart at every example. transformers reads restarting position ids as packed
examples: flash attention runs them as variable-length sequences, sdpa and eager attention get a
block-diagonal causal mask (only when the batch holds no 2-D attention mask and no cache, hence
``use_cache: False``). For a model that does not, ``attention="mask"`` passes that block-diagonal
mask itself, as a 4-D additive mask (``packed_attention.py`` finds which one a model needs).

The first token of each example carries no label: the token before it belongs to another example.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

import torch

from .sft_tokens import IGNORE, Example

ATTENTION = ("position_ids", "mask")


@dataclass
class PackedRow:
    input_ids: list[int]
    labels: list[int]
    lengths: list[int]  # the examples in the window, in order
    members: list[int]  # their indices in the example list


def pack_examples(examples: list[Example], window: int) -> list[PackedRow]:
    """Best-fit-decreasing bins of at most ``window`` tokens (every example must fit one)."""
    too_long = [i for i, e in enumerate(examples) if len(e.input_ids) > window]
    if too_long:
        raise ValueError(f"example {too_long[0] + 1} has {len(examples[too_long[0]].input_ids)} tokens, more than the window of {window}")
    bins: list[list[int]] = []
    spaces: list[int] = []  # the distinct free spaces of open bins, sorted
    by_space: dict[int, deque] = {}  # free space -> bins with it, oldest first
    for index in sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids)):  # stable: ties keep file order
        length = len(examples[index].input_ids)
        slot = bisect.bisect_left(spaces, length)
        if slot < len(spaces):
            space = spaces[slot]
            members = by_space[space].popleft()
            if not by_space[space]:
                del spaces[slot], by_space[space]
        else:
            space, members = window, []
            bins.append(members)
        members.append(index)
        left = space - length
        if left > 0:
            if left not in by_space:
                bisect.insort(spaces, left)
                by_space[left] = deque()
            by_space[left].append(members)
    return [_row(examples, members) for members in bins]


def _row(examples: list[Example], members: list[int]) -> PackedRow:
    ids, labels = [], []
    for i in members:
        ids += examples[i].input_ids
        labels += examples[i].labels
    return PackedRow(ids, labels, [len(examples[i].input_ids) for i in members], list(members))


def pad_collate(pad_id: int):
    """Examples padded on the right to the longest in the batch; padding is masked and carries no loss."""
    def collate(examples: list[Example]) -> dict:
        longest = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(examples):
            n = len(e.input_ids)
            ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return collate


def packed_collate(attention: str = "position_ids", dtype: torch.dtype = torch.float32):
    """Windows laid end to end in one row, position ids restarting at each example."""
    if attention not in ATTENTION:
        raise ValueError(f"packed attention must be one of {ATTENTION}, got {attention!r}")

    def collate(rows: list[PackedRow]) -> dict:
        lengths = [n for row in rows for n in row.lengths]
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        labels = torch.tensor([label for row in rows for label in row.labels])[None]
        labels[positions == 0] = IGNORE
        batch = {"input_ids": torch.tensor([t for row in rows for t in row.input_ids])[None], "position_ids": positions,
                 "labels": labels, "use_cache": False}  # a cache turns transformers' packed-sequence detection off
        if attention == "mask":
            batch["attention_mask"] = block_diagonal_mask(lengths, dtype)
        return batch
    return collate


def block_diagonal_mask(lengths: list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(1, 1, n, n) additive mask: each token sees the earlier tokens of its own example only."""
    example = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    n = example.numel()
    allowed = (example[:, None] == example[None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    return torch.zeros(1, 1, n, n, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
