"""What every delta is: a small module that changes one wrapped layer.

A delta overrides only the stages its method needs; the wrapper finds out which by looking at what
the subclass overrides, so the forward has no per-method branches:

    x' = x · scale_input                              (IA3 on a down projection)
    W  = (W + Σ weight_delta()) ⊙ M                   (diff pruning, LoRA with follow_mask; the mask wins)
    y  = op(x', W, b + Σ bias_delta())                (only the units output_units() names: runtime gates)
    y  = add_output(y, x')                            (LoRA, AdaLoRA: factored, never W + BA)
    y  = transform_output(y)                          (IA3 on keys/values, bottleneck adapters)

For merging, a delta gives its dense equivalent (``delta_weight``) or overrides ``merge_into`` /
``unmerge_from`` when it is not additive (IA3 multiplies). For structured pruning, ``slice_``
drops the same output or input units that were removed from the base.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .layer_kinds import LayerKind

STAGES = ("scale_input", "weight_delta", "output_units", "add_output", "transform_output")


class Stages(NamedTuple):
    """Deltas by the forward stage they take part in, in order (what a wrapper's forward runs)."""

    scale_input: tuple = ()
    weight_delta: tuple = ()
    output_units: tuple = ()
    add_output: tuple = ()
    transform_output: tuple = ()

    @classmethod
    def of(cls, deltas) -> Stages:
        return cls(*(tuple(d for d in deltas if stage in d.stages()) for stage in STAGES))

    @property
    def after_op(self) -> bool:
        """Whether they only change the op's output, row by row (so the op may run once for many adapters)."""
        return not (self.scale_input or self.weight_delta or self.output_units)


NO_STAGES = Stages()


def sliced(param: nn.Parameter, dim: int, keep: torch.Tensor) -> nn.Parameter:
    """A new parameter holding only indices ``keep`` of ``dim`` (structured pruning of a delta)."""
    with torch.no_grad():
        return nn.Parameter(param.index_select(dim, keep.to(param.device)).contiguous(), param.requires_grad)


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

    def output_units(self, x: torch.Tensor) -> torch.Tensor | None:
        """Indices of the output units worth computing (None: all); the op skips the others."""
        return None

    @classmethod
    def stages(cls) -> tuple[str, ...]:
        """The forward stages this delta class overrides."""
        return tuple(n for n in STAGES if getattr(cls, n) is not getattr(Delta, n))

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

    # ---- hot-swap (core/hotswap.py) ----
    @property
    def rescalable(self) -> bool:
        """Whether ``rescale`` is implemented (a hot-swap to another scale needs it)."""
        return type(self).rescale is not Delta.rescale

    def rescale(self, factor: float) -> None:
        """Multiply this delta's change by ``factor`` through its tensors, not through attributes a
        compiled graph read as constants (a hot-swap to an adapter with another scale)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be rescaled")

    # ---- adapter files ----
    def file_state(self) -> dict[str, torch.Tensor]:
        """The tensors an adapter file holds for this delta: its live state by default (loading
        copies into them); a delta whose file form is smaller (AdaLoRA drops masked ranks) overrides."""
        return self.state_dict(keep_vars=True)

    def peft_key(self, key: str) -> str | None:
        """The name peft gives this delta's state-dict entry ``key``, relative to the layer
        (e.g. LoRA's ``lora_A`` is ``lora_A.weight`` in peft), or None for an entry peft does not
        store (it is then neither saved nor loaded). Override when peft's names differ."""
        return key

    # ---- structured pruning ----
    @property
    def sliceable(self) -> bool:
        """Whether ``slice_`` is implemented; shrink checks every delta before it cuts anything."""
        return type(self).slice_ is not Delta.slice_

    def slice_(self, dim: str, keep: torch.Tensor) -> None:
        """Keep only output (``dim="out"``) or input (``dim="in"``) units ``keep`` of the base."""
        raise NotImplementedError(f"{type(self).__name__} does not support structured slicing yet")
