"""Causal-LM batches: tokenise texts with the model's tokenizer, pad per batch, labels = input ids
with padding set to -100 (HF models shift labels themselves and ignore -100)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


def lm_loader(texts: list[str], tokenizer, batch_size: int = 8, max_length: int = 128, shuffle: bool = False, seed: int = 0) -> DataLoader:
    if tokenizer.pad_token is None:  # GPT-2/Llama tokenizers have none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token

    def collate(batch):
        encoded = tokenizer(list(batch), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(texts, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)
