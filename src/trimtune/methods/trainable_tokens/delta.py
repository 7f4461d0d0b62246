"""Trainable tokens: chosen rows of an embedding train, the rest stays frozen.

``TokenRows`` sits on the embedding. It keeps the chosen rows as one small parameter
(``trainable_tokens_delta``, k × dim, peft's name) and their original values (to unmerge), and puts a
token's row in place of the base lookup only where that token occurs: the full vocabulary × dim weight
is never copied while training. ``TiedTokenRows`` sits on an output head that shares the embedding's
weight (tied embeddings): it reads the same parameter and recomputes only those rows' logits, so the
chosen tokens change in both places and train once. Neither can be sliced (``shrink`` refuses them before
it cuts anything).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...core.delta import Delta
from ...core.layer_kinds import LayerKind


class TokenRows(Delta):
    def __init__(self, kind: LayerKind, weight: torch.Tensor, token_indices: list[int], init_weights: bool = True):
        super().__init__(kind)
        index = torch.tensor(token_indices, dtype=torch.long, device=weight.device)
        originals = weight.detach()[index].clone()
        rows = originals.clone() if init_weights else torch.randn_like(originals)
        self.trainable_tokens_delta = nn.Parameter(rows)
        self.register_buffer("trainable_tokens_original", originals, persistent=False)
        self.register_buffer("token_index", index, persistent=False)
        # slot of each vocabulary id among the chosen rows, -1 for the others: one lookup per token
        slot = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
        self.register_buffer("slot_of", slot.index_copy(0, index, torch.arange(len(index), device=weight.device)),
                             persistent=False)

    def add_output(self, y, x):
        slot = self.slot_of[x]
        chosen = (slot >= 0).unsqueeze(-1)
        rows = self.trainable_tokens_delta[slot.clamp(min=0)].to(y.dtype)
        return torch.where(chosen, rows, y)

    # ---- merging: the rows replace the base's rows (and come back out exactly) ----
    def merge_into(self, weight, bias, mask):
        weight.index_copy_(0, self.token_index, self.trainable_tokens_delta.detach().to(weight.dtype))

    def unmerge_from(self, weight, bias, mask):
        weight.index_copy_(0, self.token_index, self.trainable_tokens_original.to(weight.dtype))

    def peft_key(self, key):
        return key if key == "trainable_tokens_delta" else None  # peft's files hold the rows only

    def extra_repr(self):
        return f"tokens={self.token_index.tolist()}"


class TiedTokenRows(Delta):
    """On a linear head whose weight is the embedding's: logits of the chosen tokens from their trained rows."""

    def __init__(self, kind: LayerKind, source: TokenRows):
        super().__init__(kind)
        object.__setattr__(self, "source", source)  # the embedding's delta: its rows are trained there, once

    def add_output(self, y, x):
        source = self.source
        logits = F.linear(x, source.trainable_tokens_delta.to(x.dtype))  # a tied head has no bias (apply checks)
        return y.index_copy(y.dim() - 1, source.token_index, logits.to(y.dtype))

    # merging the embedding's rows changed this head's weight too (one tensor): nothing more to do
    def merge_into(self, weight, bias, mask):
        pass

    def unmerge_from(self, weight, bias, mask):
        pass

    def file_state(self):
        return {"trainable_tokens_delta": self.source.trainable_tokens_delta}  # peft writes the tied copy too

    def extra_repr(self):
        return f"tied to the embedding's tokens {self.source.token_index.tolist()}"
