"""The hard-concrete gate (Louizos, Welling & Kingma, 2018, "Learning Sparse Neural Networks through
L0 Regularization"): a relaxed binary gate with an exact 0 and 1, whose expected L0 norm is differentiable.

A sample is ``z = clamp(sigmoid((log u − log(1 − u) + log α) / β) · (ζ − γ) + γ, 0, 1)`` with
``u ~ U(0, 1)``: the binary-concrete sample stretched to (γ, ζ) with γ < 0 < 1 < ζ, then clipped, so
it is exactly 0 or 1 with positive probability. ``P(z ≠ 0) = sigmoid(log α − β log(−γ / ζ))``; its sum
over gates is the expected L0 norm. The test-time gate is ``clamp(sigmoid(log α) · (ζ − γ) + γ, 0, 1)``.

The constants are parameters because the two users take different ones:
- learned L0 gates for pruning (``prune/gates.py``) use the paper's β = 2/3, γ = −0.1, ζ = 1.1;
- diff pruning (``methods/diff``) uses β = 1, γ = −1.5, ζ = 1.5, the values of Guo et al.'s (2021)
  diff-pruning code. With that wide stretch the test-time gate is 0 for every log α ≤ 0 although
  P(z ≠ 0) is still 0.5 at log α = 0 (β log(−γ/ζ) = 0). Diff's projection to an exact density ranks
  entries by the test-time |z · w|, so every entry whose gate sits at log α ≤ 0 ranks as zero there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PAPER = (2 / 3, -0.1, 1.1)  # Louizos et al. (2018), section 4: β, γ, ζ


@dataclass(frozen=True)
class HardConcrete:
    beta: float = PAPER[0]
    gamma: float = PAPER[1]
    zeta: float = PAPER[2]

    def __post_init__(self):
        if not (self.beta > 0 and self.gamma < 0 and self.zeta > 1):
            raise ValueError(f"hard-concrete needs beta > 0, gamma < 0 and zeta > 1; got {self.beta}, {self.gamma}, {self.zeta}")

    def sample(self, log_alpha: torch.Tensor) -> torch.Tensor:
        u = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (-u).log1p() + log_alpha) / self.beta)
        return self._stretch(s)

    def deterministic(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """The test-time gate: the stretched sigmoid of log α, clamped."""
        return self._stretch(torch.sigmoid(log_alpha))

    def prob_nonzero(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """P(z ≠ 0); its sum is the expected L0 norm."""
        return torch.sigmoid(log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def _stretch(self, s: torch.Tensor) -> torch.Tensor:
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0, 1)
