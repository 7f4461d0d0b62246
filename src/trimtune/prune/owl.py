"""OWL, outlier-weighed layerwise sparsity (Yin et al., 2024).

A transformer block whose Wanda scores (|W| · ‖X_j‖) hold many outliers matters more, so it is
pruned less. Per block l: the outlier ratio D_l is the share of its scores above ``m`` times the
block's mean score. Ratios are normalised to [0, 2λ], shifted so they average to the target keep
ratio, and each block's sparsity is one minus that: the sparsities stay within target ± λ and
their mean is the target (every block of a model has the same size, so the overall sparsity is kept).
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
    if not 0.0 <= lam:
        raise ConfigError(f"OWL lambda must be >= 0 (the largest change from the target sparsity), got {lam!r}")
    if target - lam < 0 or target + lam >= 1:
        raise ConfigError(f"OWL lambda {lam} moves sparsity {target} outside [0, 1); use a lambda below {min(target, 1 - target):.3f}")
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = r.max() - r.min()
    if len(ratios) < 2 or spread == 0:
        return [float(target)] * len(ratios)
    keep = (r - r.min()) / spread * (2 * lam)
    keep = keep - keep.mean() + (1 - target)
    return [float(1 - k) for k in keep]
