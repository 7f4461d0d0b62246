"""Small training helpers shared by tests: an AdamW loop that records losses, a callback that
interrupts a run at a given step (to test resuming), and a tiny token classifier."""

import torch
from torch import nn


def adamw_losses(model, batches, lr: float = 1e-2, seed: int | None = None, optimizer=None) -> list[float]:
    """Train ``model``'s trainable parameters with AdamW (or ``optimizer``) on ``batches`` (keyword dicts for
    the model, one optimizer step each); ``seed`` seeds the generator first (the dropout draws). Returns the losses."""
    model.train()
    optimizer = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    if seed is not None:
        torch.manual_seed(seed)
    losses = []
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


class Interrupt(Exception):
    pass


class InterruptAt:
    """A ``train`` callback raising ``Interrupt`` at the end of step ``step``."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, ctx, step, loss):
        if step == self.step:
            raise Interrupt(step)


class BagOfTokens(nn.Module):
    """A token classifier small enough for exact tests: mean of 8-wide embeddings of 40 tokens, 3 classes."""

    def __init__(self, seed: int, dropout: float = 0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed, self.drop, self.head = nn.Embedding(40, 8), nn.Dropout(dropout), nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.drop(self.embed(ids).mean(1)))
