"""Text classification batches: tokenise with the model's tokenizer, pad per batch, truncate."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


def text_loader(
    records: list[dict],
    tokenizer,
    labels: tuple[str, ...],
    batch_size: int = 16,
    max_length: int = 64,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader:
    """Batches of HF-style dicts (input_ids, attention_mask, ..., labels) from ``{"text", "label"}`` records.

    Padding is to the longest text of each batch (short reviews need far fewer than ``max_length``
    tokens, and attention cost grows with length).
    """
    index = {name: i for i, name in enumerate(labels)}
    unknown = {r["label"] for r in records} - set(index)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not among the allowed {list(labels)}")
    examples = [(r["text"], index[r["label"]]) for r in records]

    def collate(batch):
        texts, ids = zip(*batch)
        encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {**encoded, "labels": torch.tensor(ids)}

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)
