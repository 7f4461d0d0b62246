"""Which blocks to remove, scored on the dense model by how little they change the hidden state.

- ``block-influence`` (ShortGPT): BI_i = mean over tokens of 1 − cos(x_in, x_out); the k lowest go.
- ``angular`` (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers"): for every
  run of k consecutive blocks starting at l, the angular distance arccos(cos(x_l, x_{l+k}))/π between
  the run's input and output; the run with the smallest goes. The paper reads the last token; here
  up to ``SAMPLED_ROWS`` evenly spaced real tokens per calibration call (the last included) are kept
  at every block boundary, a few MB, never the full activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..sequential.capture import token_rows

SAMPLED_ROWS = 8


def sampled_rows(x: torch.Tensor) -> torch.Tensor:
    rows = token_rows(x.detach()).float()
    count = min(SAMPLED_ROWS, rows.shape[0])
    index = torch.linspace(rows.shape[0] - 1, 0, count).round().long().flip(0)
    return rows[index]


class DepthScores:
    """Collects, block by block on the dense model, what both depth metrics need."""

    def __init__(self):
        self.influence: list[float] = []
        self.boundaries: list[list[torch.Tensor]] = []  # per boundary, per call: sampled rows

    def start_block(self) -> None:
        self._sum, self._tokens = 0.0, 0
        if not self.boundaries:
            self.boundaries.append([])
        self.boundaries.append([])

    def add_call(self, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        """One calibration call through the current block (inside the calls' iteration, where
        ``token_rows`` knows the call's real tokens)."""
        a, b = token_rows(x_in.detach()).float(), token_rows(x_out.detach()).float()
        self._sum += float((1 - F.cosine_similarity(a, b, dim=-1)).sum())
        self._tokens += a.shape[0]
        if len(self.boundaries) == 2:
            self.boundaries[0].append(sampled_rows(x_in))  # block 0 also records the model's first boundary
        self.boundaries[-1].append(sampled_rows(x_out))

    def end_block(self) -> None:
        self.influence.append(self._sum / max(self._tokens, 1))

    def angular(self, run: int) -> list[float]:
        """Angular distance of every run of ``run`` consecutive blocks, by start index."""
        states = [torch.cat(b) for b in self.boundaries]
        out = []
        for start in range(len(states) - run):
            cos = F.cosine_similarity(states[start], states[start + run], dim=-1).clamp(-1, 1)
            out.append(float(torch.arccos(cos).mean() / torch.pi))
        return out

    def choose(self, metric: str, count: int) -> list[int]:
        """The blocks to remove, ascending."""
        if not count:
            return []
        if metric == "block-influence":
            order = torch.sort(torch.tensor(self.influence), stable=True).indices
            return sorted(order[:count].tolist())
        distances = self.angular(count)
        start = min(range(len(distances)), key=distances.__getitem__)
        return list(range(start, start + count))
