"""How LoKr splits a layer: each of out and in into two factors, and which Kronecker factor is a full
matrix and which a rank-r product (peft's and the LyCORIS repository's rules, so the shapes match).

    ΔW = s · W1 ⊗ W2,     W1: (out_l, in_m),   W2: (out_k, in_n, *kernel),   out = out_l·out_k, in = in_m·in_n
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...core.config import ConfigError


def factor_pair(dimension: int, factor: int) -> tuple[int, int]:
    """(m, n) with m · n = dimension: (factor, dimension / factor), or for factor -1 the pair closest to
    the square root with m <= n (peft's ``factorization``)."""
    if factor > 0:
        return factor, dimension // factor
    m = max(d for d in range(1, math.isqrt(dimension) + 1) if dimension % d == 0)
    return m, dimension // m


def check_factor(factor: int, dimension: int, where: str) -> None:
    """Refuse a decompose_factor that does not divide ``dimension`` (peft silently picks another pair)."""
    if factor > 0 and dimension % factor:
        divisors = [d for d in range(1, dimension + 1) if dimension % d == 0]
        raise ConfigError(f"decompose_factor={factor} does not divide {where} ({dimension}); it must be -1 (the "
                          f"factors closest to its square root) or a divisor of every target's widths, here one of {divisors}")


@dataclass(frozen=True)
class KronLayout:
    """Shapes of one layer's LoKr factors."""

    out_split: tuple[int, int]  # (out_l, out_k)
    in_split: tuple[int, int]  # (in_m, in_n)
    kernel: tuple[int, ...]  # () for a linear layer
    r: int
    full_w1: bool  # W1 a full (out_l, in_m) matrix, else (out_l, r) @ (r, in_m)
    full_w2: bool  # W2 a full (out_k, in_n, *kernel) tensor, else rank r (flat or Tucker)
    tucker: bool  # a low-rank W2 of a k×k kernel built from a core (r, r, *kernel)

    @classmethod
    def of(cls, shape: tuple[int, ...], r: int, factor: int, decompose_both: bool, tucker: bool, name: str) -> KronLayout:
        out_features, in_features, *kernel = shape
        check_factor(factor, out_features, f"the output width of {name}")
        check_factor(factor, in_features, f"the input width of {name}")
        (out_l, out_k), (in_m, in_n) = factor_pair(out_features, factor), factor_pair(in_features, factor)
        # A factor goes low-rank only when r is below half its larger side (else a full matrix is no bigger).
        full_w1 = not (decompose_both and r < max(out_l, in_m) / 2)
        full_w2 = r >= max(out_k, in_n) / 2
        return cls((out_l, out_k), (in_m, in_n), tuple(kernel), r, full_w1, full_w2, tucker and not full_w2)

    @property
    def w1(self) -> tuple[int, int]:
        return self.out_split[0], self.in_split[0]

    @property
    def w2(self) -> tuple[int, ...]:
        return self.out_split[1], self.in_split[1], *self.kernel

    @property
    def w2_columns(self) -> int:
        """Columns of a flat low-rank W2: in_n · kh · kw."""
        return self.in_split[1] * math.prod(self.kernel)
