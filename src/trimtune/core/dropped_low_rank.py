"""The low-rank branch of a linear layer (with or without input dropout), as one autograd Function.

``y + scale · (drop(x) Aᵀ) Bᵀ`` composed from library ops (what peft runs) keeps ``drop(x)`` alive
for A's gradient: one full-size float copy of the input per adapted layer, on top of the dropout
mask (a float tensor in torch's CPU dropout). Here only the input ``x`` itself and a 1-byte mask
are saved; sibling branches (q/k/v read the same tensor) then share one saved copy of ``x``
instead of holding one dropped copy and one float mask each. The dropped input is rebuilt,
briefly, in the backward pass. The backward also folds the dropout scale and the LoRA scale into
the rank-r gradient (N × r) instead of scaling N × in or N × out tensors, and applies the mask to
the input gradient in place.

The mask's random numbers were the largest single cost of the branch: ``bernoulli_`` makes one
generator call per entry, on one thread whatever the thread count (~6 ns per entry on this CPU).
``keep_mask`` instead cuts each 64-bit draw into two 32-bit integers and compares them with a
threshold (~2.2 ns per entry, comparison included). The keep probability is then
``round((1-p)·2³²)/2³²``, within 2⁻³³ of ``1-p``, and the inverted-dropout scale divides by that
exact probability, so the expected output is still exactly the input's.

The rank-r products are skinny, and on CPU their speed depends on operand layout far more than on
their FLOPs (MKL, 1 thread, N=2048 tokens, r=8, d=1536): the B gradient as ``(hᵀ g)ᵀ`` takes
1.4 ms where autograd's ``gᵀ h`` takes 7.2 ms, and ``g B`` with B read through a transposed
contiguous copy 2.0 ms instead of 3.7 ms. So the branch runs through this Function in training
with dropout 0 too (peft's composed ops, and autograd's formulas, use the slow forms).
"""

from __future__ import annotations

import math

import torch


class DroppedLowRank(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, x, a, b, scale: float, p: float):
        x2 = x.reshape(-1, x.shape[-1])
        keep, keep_prob = keep_mask(x2.shape, p, x.device) if p > 0 else (None, 1.0)
        # the 1/(1-p) of inverted dropout is applied to the N x r product, not to N x in inputs
        h = (x2 if keep is None else x2 * keep).mm(a.t())
        if keep is not None:
            h.mul_(1.0 / keep_prob)
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h, b.t(), alpha=scale)
        ctx.save_for_backward(x2, keep, h, a, b)
        ctx.scale, ctx.keep_scale, ctx.x_shape = scale, 1.0 / keep_prob, x.shape
        return out.view(y.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x2, keep, h, a, b = ctx.saved_tensors
        need_y, need_x, need_a, need_b = ctx.needs_input_grad[:4]
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_a = grad_b = None
        # Operand layouts matter: CPU BLAS is several times faster for (r x N)(N x d) than for
        # (d x N)(N x r), and for (N x d) times the transpose of a contiguous (r x d) than times a
        # contiguous (d x r); so each skinny product is written in its fast form (see the module doc).
        if need_b:
            grad_b = h.t().mm(g).mul_(ctx.scale).t()
        if need_x or need_a:
            # d/d(x ⊙ keep), both scales folded in
            grad_h = g.mm(b.t().contiguous().t()).mul_(ctx.scale * ctx.keep_scale)
            if need_a:
                grad_a = grad_h.t().mm(x2 if keep is None else x2 * keep)
            if need_x:
                grad_x = grad_h.mm(a)
                if keep is not None:
                    grad_x.mul_(keep)
                grad_x = grad_x.view(ctx.x_shape)
        return (grad_out if need_y else None), grad_x, grad_a, grad_b, None, None


BITS = 32  # random bits per mask entry


def keep_mask(shape, p: float, device=None) -> tuple[torch.Tensor, float]:
    """Inverted dropout's keep mask as 0/1 bytes (1 byte per entry; torch's CPU dropout keeps a
    float one) and its exact keep probability, which is ``1 - p`` rounded to a multiple of 2⁻³²."""
    n = math.prod(shape)
    threshold = min(max(round((1.0 - p) * 2**BITS), 1), 2**BITS - 1)  # keep-probability · 2³², never 0
    words = torch.empty((n * BITS + 63) // 64, dtype=torch.int64, device=device).random_(-(2**63), None)
    draws = words.view(torch.int32)[:n].view(shape)  # uniform over [-2³¹, 2³¹)
    # uint8, not bool: on CPU, writing a bool result and multiplying a float by a bool both take a
    # slow unvectorised conversion (~3x the time of the uint8 versions at these sizes)
    keep = torch.empty(shape, dtype=torch.uint8, device=device)
    return torch.lt(draws, threshold - 2 ** (BITS - 1), out=keep), threshold / 2**BITS


def dropped_low_rank(y, x, a, b, scale: float, p: float) -> torch.Tensor:
    """``y + scale · (dropout(x, p) Aᵀ) Bᵀ`` in training mode (``p`` may be 0); ``a``: (r, in), ``b``: (out, r)."""
    return DroppedLowRank.apply(y, x, a, b, scale, p)
