"""Orthogonal matrices from free parameters, and applying them block by block (OFT, Qiu et al., 2023).

A block's rotation is the Cayley transform of a skew-symmetric matrix Q, either exact or as
peft's truncated Neumann series (its default: no matrix inverse, a few small batched products):

    exact:    R = (I − Q)(I + Q)⁻¹                      (peft's ``torch.linalg.solve`` form)
    Neumann:  R ≈ (I + Q)(I − Q)⁻¹ = I + 2Q + 2Q² + … + 2Q^(m−1) + Q^m

The two differ in the sign of Q (so does peft); each is matched to peft's own. A rotation of
``blocks`` blocks of size b acts on a width ``blocks · b``: block i of an input row is multiplied by
R_i, which is the row times the block-diagonal matrix diag(R_1, …, R_blocks).
"""

from __future__ import annotations

import torch


def skew_from_upper(vector: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size, size) skew-symmetric matrices whose strict upper triangles are ``vector``'s rows."""
    upper = vector.new_zeros(vector.shape[0], size, size)
    upper[:, rows, cols] = vector
    return upper - upper.transpose(-2, -1)


def neumann_coefficients(terms: int) -> list[float]:
    """Coefficients of I, Q, Q², … in peft 0.21's truncated series for ``terms`` terms (its loop keeps
    at least Q³ from 3 terms on, and the last power with coefficient 1: peft >= 0.18's stable form)."""
    if terms <= 1:
        return [1.0]
    if terms == 2:
        return [1.0, 2.0]
    top = max(terms - 1, 3)
    return [1.0] + [2.0] * (top - 1) + [1.0]


def cayley_neumann(skew: torch.Tensor, terms: int) -> torch.Tensor:
    """Σ c_k Q^k by Horner's rule: one batched product per power, as many as peft's powers."""
    coefficients = neumann_coefficients(terms)
    eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device).expand_as(skew)
    if len(coefficients) == 1:
        return eye.clone()
    total = coefficients[-2] * eye + coefficients[-1] * skew
    for c in reversed(coefficients[:-2]):
        total = torch.baddbmm(eye, skew, total, beta=c)
    return total


def cayley_exact(skew: torch.Tensor) -> torch.Tensor:
    """(I − Q)(I + Q)⁻¹, solved rather than inverted."""
    eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device).expand_as(skew)
    return torch.linalg.solve(eye + skew, eye - skew, left=False)


@torch.no_grad()
def constrain_(vector: torch.Tensor, eps: float) -> None:
    """COFT's constraint, in place: each block's skew matrix kept within Frobenius norm eps/√n of zero
    (n = rows of ``vector``); a larger one is scaled back onto that sphere. ‖Q‖_F = √2 ‖upper‖."""
    radius = eps / torch.sqrt(torch.tensor(float(vector.shape[0])))
    norm = vector.norm(dim=1, keepdim=True) * torch.sqrt(torch.tensor(2.0, dtype=vector.dtype))
    outside = norm > radius
    vector.copy_(torch.where(outside, vector * (radius / norm.clamp_min(torch.finfo(vector.dtype).tiny)), vector))


def rotate_rows(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """x (..., blocks · b) times diag(R_1, …, R_blocks): block i of each row times R_i.

    One batched product over the blocks on a strided view of the rows: a single copy (the result back
    into row order), where einsum's permutations copied in the backward too."""
    blocks, size = rotation.shape[0], rotation.shape[-1]
    by_block = x.reshape(-1, blocks, size).transpose(0, 1)  # (blocks, rows, b), no copy
    return torch.bmm(by_block, rotation).transpose(0, 1).reshape(x.shape)


def rotate_weight(weight: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """W · diag(R)ᵀ for a weight (out, ...) flattened to (out, blocks · b): what rotating the inputs
    by diag(R) does to the layer, so ``op(x R, W) == op(x, rotate_weight(W, R))``."""
    flat = weight.reshape(weight.shape[0], rotation.shape[0], rotation.shape[-1])
    return torch.einsum("ork,rck->orc", flat, rotation).reshape(weight.shape)


def unrotate_weight(weight: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """The W that ``rotate_weight`` turned into ``weight``: W_iᵀ = R_i⁻¹ W'_iᵀ, solved per block
    (the Neumann series is not exactly orthogonal, so Rᵀ would not undo it)."""
    blocks, size = rotation.shape[0], rotation.shape[-1]
    flat = weight.reshape(weight.shape[0], blocks, size).permute(1, 2, 0)  # (blocks, b, out)
    return torch.linalg.solve(rotation, flat).permute(2, 0, 1).reshape(weight.shape)
