"""Repair the projection that reads removed inputs (o_proj after heads go, down_proj after FFN
channels go), from the same calibration inputs the scores came from.

With X the projection's input (tokens x in) and W its weight, the unpruned output is Y = X Wᵀ.
Keeping only the columns K:

- ``bias`` (FLAP): the removed columns' average contribution W[:, R] · mean(X_R) moves into the
  bias, so the output's mean is unchanged.
- ``lstsq``: the kept columns are refit to the unpruned output, W'ᵀ = argmin ‖X_K W'ᵀ − X Wᵀ‖², i.e.
  W' = W · H[:, K] · (H[K, K] + λI)⁻¹ with H = XᵀX/n and λ = percdamp · mean(diag H[K, K]), the
  dampening SparseGPT uses. Only the second moment is needed, never X itself.
"""

from __future__ import annotations

import torch
from torch import nn

from .parts import canonical_weight, set_canonical_weight
from .stats import ChannelStats


def refit(weight: torch.Tensor, moment: torch.Tensor, keep: torch.Tensor, percdamp: float) -> torch.Tensor:
    """The least-squares weight over the kept columns (canonical (out, len(keep))).

    Solved in float32, as SparseGPT solves its damped Hessian: at TinyLlama's FFN width a float64
    solve held about 0.9 GB of copies of H, more than the rest of a streamed block's memory."""
    rows = moment.index_select(0, keep).float()  # H[K, :]
    rhs = rows @ weight.float().t()  # H[K, :] Wᵀ
    h_kk = rows.index_select(1, keep)
    del rows
    damp = percdamp * h_kk.diagonal().mean().clamp_min(1e-12)
    h_kk.diagonal().add_(damp)
    lower, info = torch.linalg.cholesky_ex(h_kk)
    if info.item():  # not positive definite even damped (dead inputs): least squares still has an answer
        solution = torch.linalg.lstsq(h_kk.double(), rhs.double()).solution
    else:
        del h_kk
        solution = torch.cholesky_solve(rhs, lower)
    return solution.t().to(weight.dtype)


def ensure_bias(module: nn.Module) -> torch.Tensor:
    """The module's bias, created as zeros if it had none."""
    if getattr(module, "bias", None) is None:
        out = canonical_weight(module).shape[0]
        module.bias = nn.Parameter(torch.zeros(out, dtype=module.weight.dtype, device=module.weight.device), requires_grad=False)
    return module.bias


@torch.no_grad()
def repair_reader(module: nn.Module, keep: torch.Tensor, stats: ChannelStats, how: str, percdamp: float) -> None:
    """Change ``module``'s weight (still full width) so that, once cut to ``keep``, it best replaces
    the full projection. The caller cuts the columns afterwards."""
    if how == "none":
        return
    weight = canonical_weight(module).float()
    if how == "bias":
        removed = torch.ones(weight.shape[1], dtype=torch.bool)
        removed[keep] = False
        ensure_bias(module).add_((weight[:, removed] @ stats.mean[removed]).to(module.weight.dtype))
        return
    new = torch.zeros_like(weight)
    new[:, keep] = refit(weight, stats.second_moment(), keep, percdamp)
    set_canonical_weight(module, new)
