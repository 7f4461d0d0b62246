"""What every delta is: a small module that changes one wrapped layer.

A delta overrides only the stages its method needs; the wrapper finds out which by looking at what
the subclass overrides, so the forward has no per-method branches:

    x' = x · scale_input                              (IA3 on a down projection)
    W  = (W + Σ weight_delta()) ⊙ M                   (diff pruning: dense, sparse; the mask wins)
    y  = op(x', W, b + Σ bias_delta())
    y  = add_output(y, x')                            (LoRA, AdaLoRA: factored, never W + BA)
    y  = transform_output(y)                          (IA3 on keys/values, bottleneck adapters)

For merging, a delta gives its dense equivalent (``delta_weight``) or overrides ``merge_into`` /
``unmerge_from`` when it is not additive (IA3 multiplies). For structured pruning, ``slice_``
drops the same output or input units that were removed from the base.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kinds import LayerKind


class Delta(nn.Module):
    def __init__(self, kind: LayerKind):
        super().__init__()
        object.__setattr__(self, "kind", kind)  # shared with the layer; not a submodule

    # ---- forward stages (override the ones the method uses) ----
    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def weight_delta(self) -> torch.Tensor | None:
        return None

    def bias_delta(self) -> torch.Tensor | None:
        return None

    def add_output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y

    def transform_output(self, y: torch.Tensor) -> torch.Tensor:
        return y

    @classmethod
    def stages(cls) -> tuple[str, ...]:
        """The forward stages this delta class overrides."""
        names = ("scale_input", "weight_delta", "add_output", "transform_output")
        return tuple(n for n in names if getattr(cls, n) is not getattr(Delta, n))

    # ---- merging ----
    mergeable = True

    def delta_weight(self) -> torch.Tensor:
        """The dense change to the base weight, in the base weight's native layout."""
        raise NotImplementedError(f"{type(self).__name__} cannot be expressed as a dense weight change")

    def merge_into(self, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        change = self.delta_weight().to(weight.dtype)
        weight.add_(change if mask is None else change * mask)
        self._add_bias(bias, +1)

    def unmerge_from(self, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        change = self.delta_weight().to(weight.dtype)
        weight.sub_(change if mask is None else change * mask)
        self._add_bias(bias, -1)

    def _add_bias(self, bias, sign: int) -> None:
        change = self.bias_delta()
        if change is not None:
            if bias is None:
                raise ValueError(f"{type(self).__name__} changes a bias but the base layer has none")
            bias.add_(sign * change.to(bias.dtype))

    # ---- structured pruning ----
    @property
    def sliceable(self) -> bool:
        """Whether ``slice_`` is implemented; shrink checks every delta before it cuts anything."""
        return type(self).slice_ is not Delta.slice_

    def slice_(self, dim: str, keep: torch.Tensor) -> None:
        """Keep only output (``dim="out"``) or input (``dim="in"``) units ``keep`` of the base."""
        raise NotImplementedError(f"{type(self).__name__} does not support structured slicing yet")
