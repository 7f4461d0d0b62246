"""Input deltas: virtual tokens fed to the network instead of a change to a weight.

An ``InputDelta`` owns an ``embedding`` table of ``num_virtual_tokens`` rows (named as in peft, so
state dicts line up) and says which *side* of the model its output goes to:

- ``"embeddings"``: rows of width hidden_size prepended to the input embeddings (prompt tuning, P-tuning);
- ``"cache"``: rows of width ``num_layers * 2 * kv_dim`` that become per-layer key/value prefixes in the
  attention cache (prefix tuning).

Subclasses with a reparameterisation (P-tuning's MLP/LSTM, prefix tuning's MLP) override ``compute``;
``output`` caches the result while nothing needs its gradient, so inference never re-runs an encoder,
and ``folded()`` turns any delta into a plain table of its output (what peft saves and loads).
"""

from __future__ import annotations

import torch
from torch import nn

SIDES = ("embeddings", "cache")


class InputDelta(nn.Module):
    def __init__(self, num_virtual_tokens: int, width: int, side: str, kv_shape: tuple[int, int, int] | None = None):
        super().__init__()
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        self.num_virtual_tokens = num_virtual_tokens
        self.side = side
        self.kv_shape = kv_shape  # (layers, kv_heads, head_dim) for side "cache"
        self.embedding = nn.Embedding(num_virtual_tokens, width)
        self._cached: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    def compute(self) -> torch.Tensor:
        """(num_virtual_tokens, width): the virtual tokens (or flattened key/value prefixes)."""
        return self.embedding.weight

    def output(self) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if needs_grad or self.training:
            return self.compute()
        # Parameter versions change on any in-place update (optimizer step, load), so the cache cannot go stale.
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if key != self._cache_key:
            self._cached, self._cache_key = self.compute().detach(), key
        return self._cached

    def folded(self) -> InputDelta:
        """A plain table holding this delta's output: the encoder is gone, the outputs are identical."""
        with torch.no_grad():
            table = self.compute().detach().clone()
        folded = InputDelta(self.num_virtual_tokens, table.shape[1], self.side, self.kv_shape)
        folded.embedding.weight.data.copy_(table)
        return folded.to(table.device)

    def extra_repr(self) -> str:
        return f"num_virtual_tokens={self.num_virtual_tokens}, side={self.side!r}"
