"""Per-channel statistics of a layer's input over the calibration tokens (padding never enters:
rows come from ``capture.token_rows``): count, Σx, Σx², Σ|x|, optionally Σ‖x_head‖ per head and the
second moment XᵀX/n for a least-squares repair. Collected by forward pre-hooks during one pass of
the recorded calls through a block."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..early_stop import stopping_after
from ..sequential.capture import BlockCalls, token_rows


class ChannelStats:
    def __init__(self, width: int, head_dim: int | None = None, second_moment: bool = False):
        self.tokens = 0
        self.sum = torch.zeros(width, dtype=torch.float64)
        self.sum_sq = torch.zeros(width, dtype=torch.float64)
        self.sum_abs = torch.zeros(width, dtype=torch.float64)
        self.head_dim = head_dim
        self.head_norms = torch.zeros(width // head_dim, dtype=torch.float64) if head_dim else None
        self.moment = torch.zeros(width, width) if second_moment else None

    def add(self, x: torch.Tensor) -> None:
        x = token_rows(x.detach()).float()
        if not x.shape[0]:
            return
        self.tokens += x.shape[0]
        self.sum += x.sum(0).double()
        self.sum_sq += x.square().sum(0).double()
        self.sum_abs += x.abs().sum(0).double()
        if self.head_norms is not None:
            self.head_norms += x.view(x.shape[0], -1, self.head_dim).norm(dim=-1).sum(0).double()
        if self.moment is not None:
            self.moment.addmm_(x.t(), x)  # divided by the token count when read

    def _count(self) -> int:
        if not self.tokens:
            raise ValueError("no calibration tokens reached this layer; pass calibration samples with real (unpadded) tokens")
        return self.tokens

    @property
    def mean(self) -> torch.Tensor:
        return (self.sum / self._count()).float()

    @property
    def variance(self) -> torch.Tensor:
        n = self._count()
        return (self.sum_sq / n - (self.sum / n).square()).clamp_min(0).float()

    @property
    def norm(self) -> torch.Tensor:
        """‖X_j‖₂ over every token (Wanda's input norm)."""
        return self.sum_sq.sqrt().float()

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.sum_abs / self._count()).float()

    @property
    def mean_head_norm(self) -> torch.Tensor:
        return (self.head_norms / self._count()).float()

    def second_moment(self) -> torch.Tensor:
        return self.moment / self._count()


@contextmanager
def observing(stats: dict[nn.Module, ChannelStats]):
    """Feed each module's input into its stats while the block runs."""
    handles = [module.register_forward_pre_hook(lambda m, args, s=s: s.add(args[0])) for module, s in stats.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def collect(stats: dict[nn.Module, ChannelStats], block: nn.Module, calls: BlockCalls) -> None:
    """One pass of the recorded calls through the block, feeding ``stats``; each forward stops once
    the last watched module has its input (the outputs are not needed)."""
    with observing(stats), stopping_after(stats) as run:
        for call in calls:
            run(lambda: block(**call))
