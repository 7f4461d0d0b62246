"""The low-rank branch of a linear layer with input dropout, as one autograd Function.

``y + scale · (drop(x) Aᵀ) Bᵀ`` composed from library ops (what peft runs) keeps ``drop(x)`` alive
for A's gradient: one full-size float copy of the input per adapted layer, on top of the dropout
mask (a float tensor in torch's CPU dropout). Here only the input ``x`` itself and a 1-byte mask
are saved; sibling branches (q/k/v read the same tensor) then share one saved copy of ``x``
instead of holding one dropped copy and one float mask each. The dropped input is rebuilt,
briefly, in the backward pass. The backward also folds the dropout scale and the LoRA scale into
the rank-r gradient (N × r) instead of scaling N × in or N × out tensors, and applies the mask to
the input gradient in place.
"""

from __future__ import annotations

import torch


class DroppedLowRank(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, x, a, b, scale: float, p: float):
        x2 = x.reshape(-1, x.shape[-1])
        keep = keep_mask(x2.shape, p)
        # the 1/(1-p) of inverted dropout is applied to the N x r product, not to N x in inputs
        h = (x2 * keep).mm(a.t()).mul_(1.0 / (1.0 - p))
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h, b.t(), alpha=scale)
        ctx.save_for_backward(x2, keep, h, a, b)
        ctx.scale, ctx.keep_scale, ctx.x_shape = scale, 1.0 / (1.0 - p), x.shape
        return out.view(y.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x2, keep, h, a, b = ctx.saved_tensors
        need_y, need_x, need_a, need_b = ctx.needs_input_grad[:4]
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_a = grad_b = None
        if need_b:
            grad_b = g.t().mm(h).mul_(ctx.scale)
        if need_x or need_a:
            grad_h = g.mm(b).mul_(ctx.scale * ctx.keep_scale)  # d/d(x ⊙ keep), both scales folded in
            if need_a:
                grad_a = grad_h.t().mm(x2 * keep)
            if need_x:
                grad_x = grad_h.mm(a).mul_(keep).view(ctx.x_shape)
        return (grad_out if need_y else None), grad_x, grad_a, grad_b, None, None


def keep_mask(shape, p: float) -> torch.Tensor:
    """Inverted dropout's keep mask as bool (1 byte per entry; torch's CPU dropout keeps a float one)."""
    return torch.empty(shape, dtype=torch.bool).bernoulli_(1.0 - p)


def dropped_low_rank(y, x, a, b, scale: float, p: float) -> torch.Tensor:
    """``y + scale · (dropout(x, p) Aᵀ) Bᵀ`` in training mode; ``a``: (r, in), ``b``: (out, r)."""
    return DroppedLowRank.apply(y, x, a, b, scale, p)
