"""How a model keeps packed examples apart, found by trying rather than by its name.

Two short examples run packed (by ``packing.packed_collate``) must give the second one the logits it
gets alone. Restarting position ids are tried first (flash attention's variable-length path, or
transformers' packed-sequence mask for sdpa/eager); a model they do not separate gets the explicit
block-diagonal 4-D mask; a model neither separates is refused.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .packing import PackedRow, packed_collate

log = logging.getLogger("trimtune.data")
TOLERANCE = 1e-4


class PackingError(ValueError):
    """The model's attention cannot keep packed examples apart."""


@torch.no_grad()
def packed_attention(model: nn.Module, token_ids: list[int]) -> str:
    """"position_ids" or "mask" (see the module doc); ``token_ids``: a few real tokens of the data."""
    first, second = token_ids[:4], token_ids[4:7]
    if len(first) < 4 or len(second) < 3:
        raise ValueError("checking packed attention needs an example of at least 7 tokens")
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()  # no dropout: the logits are compared exactly
    try:
        alone = _logits(model, {"input_ids": torch.tensor([second]), "use_cache": False})
        row = PackedRow(first + second, first + second, [len(first), len(second)], [0, 1])
        for attention in ("position_ids", "mask"):
            batch = packed_collate(attention, dtype)([row])
            batch.pop("labels")
            packed = _logits(model, batch)[:, len(first):]
            if packed.shape == alone.shape and (packed - alone).abs().max().item() <= TOLERANCE * max(1.0, alone.abs().max().item()):
                return attention
    finally:
        model.train(was_training)
    raise PackingError(f"data.packing: {type(model).__name__} lets packed examples attend to each other both with restarting "
                       "position ids and with a block-diagonal 4-D attention mask, so packing would change the loss; "
                       "set data.packing: false")


def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    return (out.logits if hasattr(out, "logits") else out[0]).float()


def packing_attention_for(model: nn.Module, token_ids: list[int]) -> str:
    """``packed_attention``, saying which way was chosen (a fallback to the mask is a warning)."""
    attention = packed_attention(model, token_ids)
    if attention == "mask":
        log.warning("packing: %s does not separate examples by restarting position ids; falling back to a "
                    "block-diagonal 4-D attention mask (memory grows with the square of the batch's tokens)", type(model).__name__)
    else:
        log.info("packing: examples kept apart by restarting position ids")
    return attention
