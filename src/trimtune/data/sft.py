"""Instruction data as training batches: tokenise (``sft_tokens``), pick a pad token that carries no
loss, and either pad per batch or pack into windows of ``max_length`` tokens (``packing``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from .loss_positions import loss_positions_only, supports_loss_positions
from .packed_attention import packing_attention_for
from .packing import pack_examples, packed_collate, pad_collate
from .sft_tokens import tokenize_records
from .sft_tokens import pad_token_id as choose_pad_id


@dataclass(frozen=True)
class SftOptions:
    max_length: int = 128
    completion_only_loss: bool = True  # loss on the completion / assistant tokens only
    chat_template: str | None = None  # default: the tokenizer's
    packing: bool = False
    pad_token: str | None = None  # default: the tokenizer's (or a special token that carries no loss)
    loss_logits_only: bool = True  # project only the positions with a target, where the model allows (loss_positions.py)


def sft_dataset(records: list[dict], tokenizer, options: SftOptions) -> tuple[list, dict]:
    """(examples or packed windows, report): the report counts truncated and dropped examples."""
    examples, report = tokenize_records(records, tokenizer, options.max_length, options.completion_only_loss, options.chat_template)
    summary = report.to_dict()
    summary["pad_token_id"] = choose_pad_id(tokenizer, examples, options.pad_token)
    if not options.packing:
        return examples, summary
    rows = pack_examples(examples, options.max_length)
    summary["windows"] = len(rows)
    summary["fill"] = round(sum(len(r.input_ids) for r in rows) / (len(rows) * options.max_length), 4)
    return rows, summary


def sft_collate(options: SftOptions, pad_id: int, attention: str = "position_ids", dtype: torch.dtype = torch.float32):
    return packed_collate(attention, dtype) if options.packing else pad_collate(pad_id)


def sft_loader(records: list[dict], tokenizer, options: SftOptions, batch_size: int = 8, shuffle: bool = False, seed: int = 0,
               model=None) -> tuple[DataLoader, dict]:
    """(batches, report). With packing, ``model`` is checked for how it keeps examples apart
    (``packed_attention``; refused if it cannot) and the report says which way it does; with a model,
    batches ask for the logits of loss positions only when it gives the same loss so (``loss_positions``):
    pass the model as it will train (a prompt method's virtual tokens move the positions)."""
    items, report = sft_dataset(records, tokenizer, options)
    attention = "position_ids"
    if options.packing:
        if model is None:
            raise ValueError("packing needs the model, to check that its attention keeps packed examples apart")
        attention = packing_attention_for(model, probe_tokens(items))
        report["attention"] = attention
    collate = sft_collate(options, report["pad_token_id"], attention, _dtype(model))
    if options.loss_logits_only and model is not None:
        report["loss_logits_only"] = supports_loss_positions(model, probe_tokens(items))
        if report["loss_logits_only"]:
            collate = _then(collate, loss_positions_only)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator), report


def _then(collate, change):
    return lambda items: change(collate(items))


def probe_tokens(items: list) -> list[int]:
    """Seven real tokens of the data (repeated from the longest item when it is shorter)."""
    ids = max(items, key=lambda item: len(item.input_ids)).input_ids
    return (ids * 7)[:7]


def _dtype(model) -> torch.dtype:
    param = next(model.parameters(), None) if model is not None else None
    return param.dtype if param is not None and param.dtype.is_floating_point else torch.float32

