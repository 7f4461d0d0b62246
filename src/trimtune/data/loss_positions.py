"""Project only the positions that carry loss through the LM head.

With completion-only loss most positions predict a prompt token no one learns, yet the LM head
(hidden × vocabulary, the largest matrix of a small model) would turn every one into logits, and
those logits, their softmax and gradients are the peak of a step's memory. transformers' causal LMs
take ``logits_to_keep`` (the sequence positions to project) and ``shift_labels`` (targets already
aligned with those positions), so a batch can ask for the loss positions only: the loss is the same
mean over the same tokens (as TRL's fused LM head computes it). Not every model passes both through
(GPT-2 in transformers 5.23 does not), so it is checked on the model first, as packing is.
"""

from __future__ import annotations

import torch
from torch import nn

from .sft_tokens import IGNORE

TOLERANCE = 1e-5


def loss_positions_only(batch: dict) -> dict:
    """``batch`` (input_ids, labels [, ...]) asking the model for the logits of positions with a target only;
    positions are shared by the rows (those where any row has a target)."""
    labels = batch["labels"]
    targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[:, 1:]  # what each position predicts
    keep = (targets != IGNORE).any(dim=0).nonzero().flatten()
    kept = targets[:, keep]
    return {**batch, "labels": kept, "shift_labels": kept, "logits_to_keep": keep}


@torch.no_grad()
def supports_loss_positions(model: nn.Module, token_ids: list[int]) -> bool:
    """True when ``model`` gives the same loss from the loss positions alone as from every position."""
    ids = torch.tensor([token_ids])
    labels = ids.clone()
    labels[:, : len(token_ids) // 2] = IGNORE
    batch = {"input_ids": ids, "labels": labels, "use_cache": False}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        full = _loss(model, batch, device)
        reduced = _loss(model, loss_positions_only(batch), device)
    except (TypeError, ValueError, RuntimeError):  # a model that takes neither argument
        return False
    finally:
        model.train(was_training)
    return full is not None and reduced is not None and abs(full - reduced) <= TOLERANCE * max(1.0, abs(full))


def _loss(model: nn.Module, batch: dict, device) -> float | None:
    out = model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    loss = getattr(out, "loss", None)
    return None if loss is None else float(loss)
