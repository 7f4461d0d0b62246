"""BOFT's butterfly: an orthogonal matrix of the input width as a product of N block-diagonal
factors, each seen through its own permutation (Liu et al., 2024, "Parameter-Efficient Orthogonal
Finetuning via Butterfly Factorization"):

    B = M_{N−1} ⋯ M_1 M_0,      M_i = P_i · diag(R_i1, …, R_iD) · P_iᵀ

P_0 is the identity; P_i (i ≥ 1) interleaves half-blocks so that factor i mixes the units that
2^i of factor 0's blocks hold. Each R is the exact Cayley transform of a free b×b matrix A:
R = (I − S)(I + S)⁻¹ with S = (A − Aᵀ)/2, peft's form.

peft builds B as a dense width × width matrix (``boft_P`` products and, on CUDA, a block-diagonal
kernel) and multiplies it into the inputs. Here B acts on rows block by block: a permutation is an
index gather, a factor D small b×b products per row, so a step costs width · b per token where
peft's costs width².
"""

from __future__ import annotations

import torch

from ..oft.rotation import rotate_rows


def butterfly_permutation(width: int, groups: int, half_block: int) -> torch.Tensor:
    """peft's ``block_butterfly_perm(width, groups, half_block)``: in each of ``groups`` equal chunks,
    the runs of ``half_block`` units are reordered even-numbered runs first, then odd-numbered ones."""
    chunk = width // groups
    runs = torch.arange(chunk).view(-1, half_block)
    order = torch.cat([runs[0::2], runs[1::2]]).flatten()
    return (torch.arange(0, width, chunk)[:, None] + order).flatten()


def factor_permutations(width: int, factors: int, block_num: int, block_size: int) -> list[torch.Tensor | None]:
    """P_i as index vectors (None: the identity, skipped), as peft builds them: factor i interleaves
    ``block_num / 2^i`` chunks in runs of half a block (for i = 0 that leaves every unit in place);
    with one factor peft permutes nothing."""
    if factors == 1:
        return [None]
    permutations = [butterfly_permutation(width, block_num // 2 ** i, block_size // 2) for i in range(factors)]
    return [None if torch.equal(p, torch.arange(width)) else p for p in permutations]


def cayley(free: torch.Tensor) -> torch.Tensor:
    """(I − S)(I + S)⁻¹ with S the skew-symmetric part of each b×b matrix in ``free`` (..., b, b)."""
    skew = 0.5 * (free - free.transpose(-2, -1))
    eye = torch.eye(free.shape[-1], dtype=free.dtype, device=free.device).expand_as(skew)
    return torch.linalg.solve(eye + skew, eye - skew, left=False)


def apply_butterfly(x: torch.Tensor, factors: torch.Tensor, permutations, inverses, transposed: bool = False):
    """x (..., width) times B (``transposed``: times Bᵀ), B = M_{N−1} ⋯ M_0 from ``factors`` (N, D, b, b).

    x M_i = x P_i diag(R_i) P_iᵀ: gather the columns by P_i's inverse, rotate each block, gather
    back by P_i. x B applies M_{N−1} first; x Bᵀ = x M_0ᵀ ⋯ M_{N−1}ᵀ applies M_0ᵀ (blocks transposed) first.
    """
    order = range(len(factors)) if transposed else reversed(range(len(factors)))
    for i in order:
        blocks = factors[i].transpose(-2, -1) if transposed else factors[i]
        if permutations[i] is None:
            x = rotate_rows(x, blocks)
        else:
            x = rotate_rows(x[..., inverses[i]], blocks)[..., permutations[i]]
    return x
