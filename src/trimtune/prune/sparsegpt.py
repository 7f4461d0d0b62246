"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning that also repairs the kept weights.

Per layer, from calibration inputs X (one row per token): the Hessian of the layer-wise squared error
``H = 2 XᵀX / n``. Columns (input channels) are visited left to right in blocks; when column j is
pruned, the optimal-brain-surgeon update spreads its error over the columns not yet visited,
``W[:, j:] -= (w_j - q_j) / [H_F⁻¹]_jj · [H_F⁻¹]_j,j:`` (F = the columns from j on). The rows
``[H_F⁻¹]_j,j:/sqrt([H_F⁻¹]_jj)`` for every j at once are the upper Cholesky factor U of H⁻¹, which is
why the kernel factors once and never inverts a sub-matrix. The mask is chosen by the OBS saliency
``w² / U_jj²``: unstructured, per column block over the weights as updated so far (adaptive mask
selection); N:M, per group of M consecutive columns when the loop reaches the group.

Everything works in the canonical layout (out, in); GPT-2's Conv1D stores (in, out) and is
transposed in and out by the layer kind. ``n`` counts tokens, not sequences (H's scale cancels out).

Unstructured mask selection, per column block (``selection``):

- ``"exact"`` (default): exactly ``round(sparsity · entries)`` lowest scores of the block, ties
  broken by position (a stable sort), so a layer's sparsity is what was asked for.
- ``"reference"``: the choice of the reference code (IST-DASLab/sparsegpt ``fasterprune``) and of
  llm-compressor: ``thresh`` = the score at 0-based index ``int(entries · sparsity)`` of the sorted
  block, and every entry with ``score <= thresh`` is pruned, so ``int(entries · sparsity) + 1``
  entries (more on ties; at least one even at sparsity 0). Use it to reproduce their masks.

N:M groups are chosen the same way in both (``topk(largest=False)`` of each group of M, as the
reference code does), so ``selection`` only changes unstructured pruning.
"""

from __future__ import annotations

import torch

from ..core.config import ConfigError, check_choice, check_positive_int
from ..core.masks import set_canonical_mask
from ..core.tuned_layer import TunedLayer


class Hessian:
    """Running ``2 XᵀX / n`` over every token seen, for a layer with ``columns`` inputs."""

    def __init__(self, columns: int):
        self.matrix = torch.zeros(columns, columns)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        new = x.shape[0]
        if not new:
            return
        # A running mean keeps H well scaled however many tokens arrive (no overflow, no rescaling at the end).
        self.matrix.mul_(self.tokens / (self.tokens + new))
        self.tokens += new
        x = x * (2.0 / self.tokens) ** 0.5
        self.matrix.addmm_(x.t(), x)

    def copy(self) -> "Hessian":
        other = Hessian.__new__(Hessian)
        other.matrix, other.tokens = self.matrix.clone(), self.tokens
        return other

    def take(self) -> torch.Tensor:
        """Hand the matrix over (the kernel overwrites it) and keep no reference, so it can be freed early."""
        matrix, self.matrix = self.matrix, None
        return matrix


def check_nm(n: int, m: int, columns: int, blocksize: int, where: str) -> None:
    if not 0 < n < m:
        raise ConfigError(f"N:M needs 0 < N < M (keep N of every M), got {n}:{m}")
    if columns % m:
        raise ConfigError(f"{where}: input width {columns} is not a multiple of M={m} for {n}:{m} sparsity")
    if blocksize % m:
        raise ConfigError(f"blocksize {blocksize} must be a multiple of M={m} so no group of M straddles two blocks")


class SingularHessianError(ValueError):
    """The damped calibration Hessian (or its inverse) has no Cholesky factor."""


def _cholesky(h: torch.Tensor, percdamp: float, upper: bool = False) -> torch.Tensor:
    # cholesky_ex, not cholesky: a nearly singular H can factor while its inverse does not, and
    # torch's own error there (_LinAlgError) says nothing about what to change.
    factor, info = torch.linalg.cholesky_ex(h, upper=upper)
    if info.item():
        raise SingularHessianError(
            f"the calibration Hessian is not positive definite even with percdamp={percdamp}; "
            "raise percdamp (e.g. 0.1) or use more calibration tokens"
        )
    return factor


def _damped_cholesky(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Lower Cholesky factor of H + λI with λ = percdamp · mean(diag H); dampens ``h`` in place."""
    diag = torch.arange(h.shape[0])
    h[diag, diag] += percdamp * torch.mean(torch.diag(h))
    return _cholesky(h, percdamp)


SELECTIONS = ("exact", "reference")


def _unstructured_block_mask(w: torch.Tensor, d: torch.Tensor, sparsity: float, selection: str = "exact") -> torch.Tensor:
    """True = pruned: the ``round(sparsity · numel)`` lowest ``w² / d²`` of the block ("exact"), or
    every score at or below the reference code's threshold ("reference"; see the module docstring)."""
    score = (w.pow(2) / d.pow(2).unsqueeze(0)).flatten()
    if selection == "reference":
        # torch.sort(score)[0][int(numel * sparsity)] of the reference code; kthvalue counts from 1
        thresh = torch.kthvalue(score, int(score.numel() * sparsity) + 1).values
        return (score <= thresh).view_as(w)
    k = round(sparsity * score.numel())
    pruned = torch.zeros_like(score, dtype=torch.bool)
    if k:
        pruned[torch.argsort(score, stable=True)[:k]] = True
    return pruned.view_as(w)


@torch.no_grad()
def sparsegpt(
    weight: torch.Tensor, hessian: torch.Tensor, sparsity: float | None = None, n: int = 0, m: int = 0,
    blocksize: int = 128, percdamp: float = 0.01, consume: bool = False, selection: str = "exact",
    in_place: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune a canonical (out, in) ``weight`` given its inputs' Hessian. ``sparsity`` (unstructured) or
    ``n:m`` (keep n of every m inputs). Returns the updated float32 weight and the bool keep mask (True = kept).
    ``consume=True`` lets the kernel overwrite a float32 ``hessian`` instead of copying it (saves memory).
    ``in_place=True`` updates a float32 ``weight`` itself and returns it (no copy of the layer); it is
    touched only after the factorisation succeeded, so a non-positive-definite Hessian leaves it as it was.
    ``selection``: "exact" or "reference" (the reference code's ``<=`` threshold; module docstring)."""
    check_positive_int("blocksize", blocksize)
    check_choice("selection", selection, SELECTIONS)
    if percdamp < 0:
        raise ConfigError(f"percdamp must be >= 0 (a fraction of the mean Hessian diagonal), got {percdamp!r}")
    if n or m:
        check_nm(n, m, weight.shape[1], blocksize, "sparsegpt")
    elif sparsity is None or not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be a fraction in [0, 1) or give n:m, got {sparsity!r}")
    h = hessian.float() if consume else hessian.float().clone()
    del hessian
    dead = torch.diag(h) == 0  # inputs that were always zero: nothing to learn, prune them first
    h[dead, dead] = 1
    # U = upper Cholesky factor of (H + λI)⁻¹. Each intermediate is dropped as soon as the next
    # exists: for a 5632-wide layer one matrix is 127 MB, so at most two are alive at a time.
    lower = _damped_cholesky(h, percdamp)
    del h
    inverse = torch.cholesky_inverse(lower)
    del lower
    u = _cholesky(inverse, percdamp, upper=True)
    del inverse
    # Made only now, so the weight's copy (46 MB for a 5632 x 2048 layer) is not alive beside two n x n matrices.
    w = weight.detach() if in_place and weight.dtype == torch.float32 else weight.detach().float().clone()
    w[:, dead] = 0
    pruned = torch.zeros_like(w, dtype=torch.bool)
    columns = w.shape[1]
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        _prune_block(w, u, pruned, start, end, sparsity, n, m, selection)
    return w, pruned.logical_not_()  # bool, in place: a float mask would be 4 bytes an entry (46 MB for a 5632 x 2048 layer)


# Columns per inner step of a column block. Within a step the OBS updates go column by column, on at
# most LEAF x rows entries (under torch's parallel grain of 32768 for layers up to 2048 rows wide, so
# these tiny ops run on one thread and never wait for a busy second one); the step's combined error
# then reaches the rest of the block in one matrix product. A multiple of every M <= 16.
LEAF = 16


def _prune_block(w, u, pruned, start, end, sparsity, n, m, selection) -> None:
    """Columns [start, end): prune and update inside the block, then push the block's accumulated
    error onto the columns after it in one matrix product (the lazy batch update).

    The block is worked on transposed, (columns, rows), so a column is one contiguous vector. Column
    j's OBS update subtracts ``error_j · U[j, k]`` from every later column k; the same updates are
    applied here in another order (first inside a step of LEAF columns, then, for the columns after
    the step, as one product), which needs the mask of a column only when the loop reaches it:
    unstructured masks are fixed at the block start, N:M masks at each group's first column."""
    u_block = u[start:end, start:end]
    d = torch.diag(u_block)
    cols = w[:, start:end].t().contiguous()
    width = end - start
    if m:
        mask = torch.zeros_like(cols, dtype=torch.bool)
    else:  # scored on the (rows, columns) view: the same order, so the same choice on ties
        mask = _unstructured_block_mask(cols.t(), d, sparsity, selection).t().contiguous()
    errors = torch.zeros_like(cols)
    step = LEAF if not m or LEAF % m == 0 else m
    for a in range(0, width, step):
        b = min(a + step, width)
        for i in range(a, b):
            if m and i % m == 0:
                score = (cols[i:i + m].t().pow(2) / d[i:i + m].pow(2).unsqueeze(0)).contiguous()
                mask[i:i + m].t().scatter_(1, torch.topk(score, m - n, dim=1, largest=False).indices, True)
            # error = (column - kept) / d: the pruned entries' values, zero where kept
            torch.div(cols[i].masked_fill(~mask[i], 0.0), d[i], out=errors[i])
            if i + 1 < b:
                cols[i + 1:b].addr_(u_block[i, i + 1:b], errors[i], alpha=-1)
        if b < width:
            cols[b:].addmm_(u_block[a:b, b:].t(), errors[a:b], alpha=-1)
    w[:, start:end] = cols.masked_fill_(mask, 0.0).t()
    pruned[:, start:end] = mask.t()
    w[:, end:].addmm_(errors.t(), u[start:end, end:], alpha=-1)


@torch.no_grad()
def sparsegpt_layer(
    layer: TunedLayer, hessian: Hessian, sparsity: float | None = None, n: int = 0, m: int = 0,
    blocksize: int = 128, percdamp: float = 0.01, name: str = "", selection: str = "exact",
) -> None:
    """Run SparseGPT on a wrapped layer: writes the repaired weight and the mask (so reports see it)."""
    if hessian.tokens == 0:
        raise ValueError(f"{name or layer.describe()}: SparseGPT saw no calibration inputs for this layer")
    canon = layer.kind.to_canonical(layer.weight.detach())
    if m:
        check_nm(n, m, canon.shape[1], blocksize, name or layer.describe())
    try:
        new, keep = sparsegpt(canon, hessian.take(), sparsity, n, m, blocksize, percdamp, consume=True, selection=selection, in_place=True)
    except SingularHessianError as error:
        raise SingularHessianError(f"{name or layer.describe()}: {error}") from None
    if new.data_ptr() != layer.weight.data_ptr():  # a float32 weight was updated in place already
        layer.weight.copy_(layer.kind.from_canonical(new).to(layer.weight.dtype))
    set_canonical_mask(layer, keep)
