"""OWL, outlier-weighed layerwise sparsity (Yin et al., 2024).

A transformer block whose Wanda scores (|W| · ‖X_j‖) hold many outliers matters more, so it is
pruned less. Per block l: the outlier ratio D_l is the share of its scores above ``m`` times the
block's mean score. Ratios are normalised to [0, 2λ], shifted so they average to the target keep
ratio, and each block's sparsity is one minus that (as the OWL reference code does): the block
sparsities span exactly 2λ (when the ratios differ), their mean is the target (every block of a model
has the same size, so the overall sparsity is kept), and one block can move up to 2λ from the target
(one outlier-rich block among plain ones). So λ ≤ min(target, 1 − target) / 2 always fits; a larger λ
fits or not depending on the ratios, and the whole vector is checked before any block is pruned.
"""

from __future__ import annotations

import torch

from ..core.config import ConfigError


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Share of all entries of ``scores`` (one tensor per layer of the block) above ``m`` × their mean."""
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.double().sum()) for s in scores) / total
    above = sum(int((s > m * mean).sum()) for s in scores)
    return above / total


def owl_sparsities(ratios: list[float], target: float, lam: float) -> list[float]:
    """Per-block sparsities from outlier ratios: more outliers, lower sparsity; mean = target."""
    check_lambda(target, lam)
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = r.max() - r.min()
    if len(ratios) < 2 or spread == 0:
        return [float(target)] * len(ratios)
    keep = (r - r.min()) / spread * (2 * lam)
    keep = keep - keep.mean() + (1 - target)
    sparsities = [float(1 - k) for k in keep]
    outside = [(i, s) for i, s in enumerate(sparsities) if not 0.0 <= s < 1.0]
    if outside:
        i, s = outside[0]
        raise ConfigError(f"OWL lambda {lam} gives block {i} sparsity {s:.4f}, outside [0, 1) (the block sparsities span 2 x lambda "
                          f"around the target {target}); use a lambda of at most {_safe(target):.3f}, which always fits")
    return sparsities


def check_lambda(target: float, lam: float) -> None:
    """What can be refused before the ratios are known: a negative λ, or a spread 2λ wider than [0, 1)."""
    if not 0.0 <= lam or 2 * lam >= 1:
        raise ConfigError(f"OWL lambda must be in [0, 0.5) (the block sparsities span 2 x lambda), got {lam!r}; "
                          f"at sparsity {target} a lambda of at most {_safe(target):.3f} always fits")


def _safe(target: float) -> float:
    return min(target, 1 - target) / 2
