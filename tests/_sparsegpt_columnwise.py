"""SparseGPT's in-block loop as it was before the stepped kernel (column by column, every OBS update
applied to the whole rest of the block at once): the slow path the fast kernel is tested against."""

import torch

from trimtune.prune.sparsegpt import _unstructured_block_mask


def columnwise_prune_block(w, u, pruned, start, end, sparsity, n, m, selection) -> None:
    block = w[:, start:end].clone()
    u_block = u[start:end, start:end]
    d = torch.diag(u_block)
    mask = _unstructured_block_mask(block, d, sparsity, selection) if not m else torch.zeros_like(block, dtype=torch.bool)
    errors = torch.zeros_like(block)
    for i in range(end - start):
        if m and i % m == 0:
            score = block[:, i:i + m].pow(2) / d[i:i + m].pow(2).unsqueeze(0)
            mask[:, i:i + m].scatter_(1, torch.topk(score, m - n, dim=1, largest=False).indices, True)
        column = block[:, i]
        kept = column.masked_fill(mask[:, i], 0.0)
        error = (column - kept) / d[i]
        block[:, i:] -= error.unsqueeze(1) * u_block[i, i:].unsqueeze(0)
        block[:, i] = kept
        errors[:, i] = error
    w[:, start:end] = block
    pruned[:, start:end] = mask
    w[:, end:] -= errors @ u[start:end, end:]
