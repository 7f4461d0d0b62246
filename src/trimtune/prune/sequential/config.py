"""What the sequential pipeline is asked to do, checked before anything is loaded or written."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...core.config import ConfigError, check_choice, check_positive_int
from ..owl import check_lambda
from ..sparsegpt import SELECTIONS

METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass
class SequentialConfig:
    """method: magnitude, wanda or sparsegpt. sparsity: a fraction in [0, 1) of each layer's weights
    to prune, or "N:M" (keep N of every M consecutive inputs, e.g. "2:4"). blocksize / percdamp:
    SparseGPT's column block and dampening (fraction of the mean Hessian diagonal). owl: per-block
    sparsity from outlier ratios (Wanda scores above owl_m × mean), spanning 2·owl_lambda (``prune.owl``).
    selection: SparseGPT's unstructured mask per column block, "exact" (round(sparsity · entries)) or
    "reference" (the reference code's and llm-compressor's ``<= threshold``: one entry more, plus ties;
    see ``trimtune.prune.sparsegpt``). batch_tokens: calibration samples run together in forwards of up to
    this many tokens, padding included (one longer sample runs alone): more is faster, and costs
    activation memory in proportion."""

    method: str = "sparsegpt"
    sparsity: float | str = 0.5
    blocksize: int = 128
    percdamp: float = 0.01
    owl: bool = False
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    selection: str = "exact"
    batch_tokens: int = 2048

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_choice("selection", self.selection, SELECTIONS)
        if self.selection != "exact" and self.method != "sparsegpt":
            raise ConfigError(f"selection {self.selection!r} is SparseGPT's mask choice; method {self.method!r} has none")
        check_positive_int("blocksize", self.blocksize)
        check_positive_int("batch_tokens", self.batch_tokens)
        if not isinstance(self.percdamp, (int, float)) or self.percdamp < 0:
            raise ConfigError(f"percdamp must be a number >= 0, got {self.percdamp!r}")
        if isinstance(self.sparsity, str) and not re.fullmatch(r"\d+:\d+", self.sparsity):
            try:
                self.sparsity = float(self.sparsity)
            except ValueError:
                raise ConfigError(f"sparsity must be a fraction in [0, 1) or 'N:M' such as '2:4', got {self.sparsity!r}") from None
        if self.nm:
            n, m = self.nm
            if not 0 < n < m:
                raise ConfigError(f"sparsity N:M needs 0 < N < M (keep N of every M), got {self.sparsity!r}")
            if self.method == "sparsegpt" and self.blocksize % m:
                raise ConfigError(f"blocksize {self.blocksize} must be a multiple of M={m} for N:M sparsity")
            if self.owl:
                raise ConfigError("owl sets a sparsity per block; it cannot be combined with N:M sparsity (fixed at 1 - N/M)")
        elif isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be a fraction in [0, 1) or 'N:M' such as '2:4', got {self.sparsity!r}")
        if self.owl and self.method == "magnitude":
            raise ConfigError("owl needs calibration activations (Wanda scores); use method 'wanda' or 'sparsegpt'")
        if self.owl and self.owl_m <= 0:
            raise ConfigError(f"owl_m must be > 0 (outliers are scores above owl_m × the block mean), got {self.owl_m!r}")
        if self.owl:
            check_lambda(float(self.sparsity), self.owl_lambda)  # before any calibration; the vector once the ratios are known

    @property
    def nm(self) -> tuple[int, int] | None:
        if isinstance(self.sparsity, str):
            n, m = map(int, self.sparsity.split(":"))
            return n, m
        return None

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude"
