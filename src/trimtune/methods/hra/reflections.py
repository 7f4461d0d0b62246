"""A product of Householder reflections in compact form, so it can act on activations without an in × in matrix.

The reflection along u is ``I - 2 u uᵀ / uᵀu``. The product of r of them, ``H = H(u_1) H(u_2) … H(u_r)``,
equals ``I - U S⁻¹ Uᵀ`` with U = [u_1 … u_r] and S the upper triangle of ``UᵀU`` with its diagonal halved
(the "UT transform" of Joffrain, Low, Quintana-Ortí, van de Geijn and Van Zee, 2006). With Gram-Schmidt
(``apply_gs``) HRA uses instead the single reflection across the span of U, ``I - 2 Q Qᵀ`` for an
orthonormal basis Q of it (a QR factor: the same projector as Gram-Schmidt's, signs aside).

Either way ``H = I - L R`` with L (in × r) and R (r × in): applying it to a batch of inputs costs two
thin matmuls over the tokens, where building H costs r passes over an in × in matrix.
"""

from __future__ import annotations

import torch


def reflection_factors(vectors: torch.Tensor, apply_gs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with ``L @ R = I - H``; ``vectors`` is (in, r), one reflection vector per column (any length)."""
    if apply_gs:
        basis = torch.linalg.qr(vectors).Q
        return basis, 2 * basis.T
    gram = vectors.T @ vectors
    halved = torch.triu(gram, diagonal=1) + torch.diag_embed(gram.diagonal() / 2)
    return vectors, torch.linalg.solve_triangular(halved, vectors.T, upper=True)


def reflection_matrix(vectors: torch.Tensor, apply_gs: bool) -> torch.Tensor:
    """H itself (in × in), for merging into a weight."""
    left, right = reflection_factors(vectors, apply_gs)
    return torch.eye(left.shape[0], dtype=left.dtype, device=left.device) - left @ right
