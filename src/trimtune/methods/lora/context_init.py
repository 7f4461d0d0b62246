"""CorDA (Yang et al., 2024): start the factors from W's decomposition in the context of its inputs.

The covariance C of each target's inputs over the calibration batches (``init_batches``; the model
in eval mode, each call's inputs flattened to (tokens, in) and divided by their largest value, as
peft does) is damped until it inverts well (``C + d·mean(diag C)·I``, d from 0.01 doubling until
``‖C C⁻¹ − I‖ < 0.05``). The SVD ``W C = U S Vᵀ`` gives ``W = U S (C⁻¹ V)ᵀ``; the adapter takes
r of its triplets: ``corda_method="ipm"`` (instruction-previewed) the largest, to adapt what the
data uses most, ``"kpm"`` (knowledge-preserved) the smallest, to keep the rest of W as it was.
``A0 = √(S/s) (C⁻¹V)ᵀ``, ``B0 = U √(S/s)``; the base keeps ``W − s·B0 A0`` (``residual.py``).
"""

from __future__ import annotations

import torch
from torch import nn

CORDA_METHODS = ("ipm", "kpm")


@torch.no_grad()
def input_covariances(model: nn.Module, names: list[str], batches) -> dict[str, torch.Tensor]:
    """{name: mean over forward calls of xᵀx / max(x)²} for the modules ``names``; the model's mode is put back."""
    sums: dict[str, torch.Tensor] = {}
    calls = dict.fromkeys(names, 0)

    def record(name):
        def hook(module, inputs, output):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            x = x / x.max().abs()  # peft's normalisation: by the largest value (not the largest magnitude)
            sums[name] = sums.get(name, 0) + x.T @ x
            calls[name] += 1
        return hook

    handles = [model.get_submodule(name).register_forward_hook(record(name)) for name in names]
    was_training = model.training
    try:
        model.eval()
        for batch in batches:
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: sums[name] / calls[name] for name in names if calls[name]}


@torch.no_grad()
def corda_factors(weight: torch.Tensor, covariance: torch.Tensor, r: int, scale: float,
                  method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0, B0) in float32 from the canonical (out, in) ``weight`` and its inputs' ``covariance``."""
    covariance = covariance.float()
    identity = torch.eye(covariance.shape[0], device=covariance.device)
    damp = 0.01
    while True:  # damp until the inverse is trustworthy
        damped = covariance + identity * covariance.diagonal().mean() * damp
        inverse = torch.linalg.inv(damped)
        if torch.dist(damped @ inverse, identity).item() < 0.05:
            break
        damp *= 2
    u, s, vh = torch.linalg.svd(weight.float() @ damped, full_matrices=False)
    v = (vh @ inverse).T
    keep = slice(0, r) if method == "ipm" else slice(-r, None)
    root = torch.sqrt(s[keep] / scale)
    return (v[:, keep].T * root[:, None]).contiguous(), (u[:, keep] * root).contiguous()
