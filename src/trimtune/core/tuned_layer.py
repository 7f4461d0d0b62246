"""The one wrapper: a frozen base layer, an optional mask, and an ordered set of named deltas.

``TunedLayer`` takes over the base layer's parameters under their *original names*, so the
model's state-dict keys for the base are unchanged (``...query.weight`` stays ``...query.weight``)
and a base checkpoint loads without key surgery. The base module object is kept (unregistered)
only for its hyper-parameters (stride, padding_idx, ...) and to hand the parameters back on unload.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .adapter_host import DeltaHost, take_over_tensors
from .delta import NO_STAGES, Delta, Stages
from .four_bit import dequantize_base, is_4bit
from .layer_kinds import kind_class_for, supported_types
from .plain_four_bit import live_weight
from .row_adapters import RowAdapters, assemble, rows_for


class TunedLayer(DeltaHost):
    is_target = True
    mixes_rows = True

    def __init__(self, base: nn.Module):
        super().__init__()
        kind_cls = kind_class_for(base)
        if kind_cls is None:
            raise TypeError(
                f"cannot wrap {type(base).__name__}: supported layer types are {', '.join(supported_types())}"
            )
        object.__setattr__(self, "base_layer", base)
        self.kind = kind_cls(base)
        take_over_tensors(self, base)
        if "bias" not in self._parameters:
            self.bias = None
        self.register_buffer("weight_mask", None)
        self.deltas = nn.ModuleDict()
        self.active: tuple[str, ...] = ()
        self.module_name = ""  # dotted name in the model, set by core.state.wrap
        self.merged: tuple[str, ...] = ()
        self._refresh()

    # ---- the forward, written once ----
    def forward(self, x):
        rows = rows_for(self)
        if rows is not None:
            return self._forward_mixed(x, rows)
        return self._run(x, self._live)

    def _run(self, x, stages: Stages):
        for delta in stages.scale_input:
            x = delta.scale_input(x)
        weight, bias = live_weight(self), self.bias  # a 4-bit base sharded by FSDP2 gets its quant state back
        for delta in stages.weight_delta:
            weight = weight + delta.weight_delta()
            extra_bias = delta.bias_delta()
            if extra_bias is not None:
                bias = extra_bias if bias is None else bias + extra_bias
        # The mask comes after the dense deltas: a pruned entry stays zero whatever a delta adds,
        # which is also what merge(keep_sparsity=True) folds in (W + δ ⊙ M, then ⊙ M).
        if self.weight_mask is not None:
            weight = weight * self.weight_mask
        keep = None
        for delta in stages.output_units:  # runtime gates: compute only the open output units
            keep = delta.output_units(x)
        y = self.kind.forward(x, weight, bias) if keep is None else self.kind.forward_units(x, weight, bias, keep)
        return self._finish(y, x, stages)

    @staticmethod
    def _finish(y, x, stages: Stages):
        for delta in stages.add_output:
            y = delta.add_output(y, x)
        for delta in stages.transform_output:
            y = delta.transform_output(y)
        return y

    def _forward_mixed(self, x, rows: RowAdapters):
        """Each example with its own adapter (``core/mixed_batch.py``). When every adapter in the batch
        only adds to or transforms the output (LoRA, DoRA, VeRA, IA3 on outputs, ...), the base op runs
        once on the whole batch and each group of rows gets its adapter's stages; an adapter that
        changes the weight or the input (LoHa, LoKr, diff, IA3 on inputs) runs its rows separately."""
        groups = rows.indices(x.shape[0], x.device, self.module_name or self.describe())
        stages = {name: Stages.of([self.deltas[name]] if name in self.deltas else []) for name in groups}
        if all(s.after_op for s in stages.values()):
            y = self._run(x, NO_STAGES)
            for name, idx in groups.items():
                if any(stages[name]):
                    y = y.index_copy(0, idx, self._finish(y[idx], x[idx], stages[name]))
            return y
        parts = [(idx, self._run(x[idx], stages[name])) for name, idx in groups.items()]
        return assemble(parts, x.shape[0])

    def _refresh(self) -> None:
        """Cache the stages of the active deltas that are not merged into the weight."""
        object.__setattr__(self, "_live", Stages.of([self.deltas[n] for n in self.active if n not in self.merged]))

    # ---- managing deltas ----
    def add_delta(self, name: str, delta: Delta) -> None:
        if name in self.deltas:
            raise ValueError(f"{self.describe()} already has an adapter named {name!r}; pick another name or delete it first")
        self.deltas[name] = delta.train(self.training)  # e.g. no LoRA dropout on a model in eval()
        self._refresh()

    def delete_delta(self, name: str) -> None:
        self.delete_adapter(name)

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        delta = self.deltas[name]
        return list(getattr(delta, "trainable_parameters", delta.parameters)())

    def peft_tensors(self, name: str, path: str) -> dict[str, torch.Tensor]:
        delta = self.deltas[name]
        named = ((delta.peft_key(k), v) for k, v in delta.file_state().items())
        return {f"{path}.{key}": v for key, v in named if key is not None}

    def set_mask(self, mask: torch.Tensor | None) -> None:
        if mask is not None and mask.shape != self.weight.shape:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not fit {self.describe()} whose weight is {tuple(self.weight.shape)}"
            )
        # Stored as bool (1 byte per entry, not the weight's 4): a pruned model's state dict stays near the
        # dense size. A float mask from an older file loads into it as "entry != 0".
        self.weight_mask = None if mask is None else (mask != 0).to(device=self.weight.device)

    # ---- merging ----
    @torch.no_grad()
    def merge(self, names: Iterable[str] | None = None, keep_sparsity: bool = True) -> float:
        """Fold the named (default: active) deltas into the weight. Returns the largest share (by norm)
        of a delta's change that a kept mask drops: a factored delta (LoRA) is added to the output
        unmasked while training, so merging it into a pruned layer with ``keep_sparsity`` changes
        the outputs by that part (0.0 when nothing is dropped)."""
        names = tuple(self.active if names is None else names)
        for name in names:
            if name in self.merged:
                raise ValueError(f"adapter {name!r} is already merged into {self.describe()}")
            delta = self.deltas[name]
            if not delta.mergeable:
                raise ValueError(f"adapter {name!r} ({type(delta).__name__}) cannot be merged into a weight")
        if names and is_4bit(self.weight):
            dequantize_base(self, "merging into")
        mask = self.weight_mask if keep_sparsity else None
        if not keep_sparsity and self.weight_mask is not None:
            # A dense merge keeps the output: W ⊙ M + ΔW, so fold the mask in first and drop it.
            self.weight.mul_(self.weight_mask)
            self.weight_mask = None
        dropped = 0.0
        for name in names:
            delta = self.deltas[name]
            if mask is not None and "add_output" in delta.stages():
                change = delta.delta_weight()
                dropped = max(dropped, float((change * ~mask).norm() / change.norm().clamp_min(1e-30)))
            delta.merge_into(self.weight, self.bias, mask)
            self.merged += (name,)
        self._refresh()
        return dropped

    @torch.no_grad()
    def unmerge(self, names: Iterable[str] | None = None) -> None:
        names = tuple(reversed(self.merged)) if names is None else tuple(names)
        mask = self.weight_mask
        for name in names:
            if name not in self.merged:
                raise ValueError(f"adapter {name!r} is not merged into {self.describe()}")
            self.deltas[name].unmerge_from(self.weight, self.bias, mask)
            self.merged = tuple(n for n in self.merged if n != name)
        self._refresh()

    def restore_base(self) -> nn.Module:
        """Hand the parameters back to the original module and return it (deltas are dropped)."""
        base = self.base_layer
        if is_4bit(self.weight):  # the plain base class cannot run a packed weight
            dequantize_base(self, "unloading")
        base._parameters.update(self._parameters)
        base._buffers.update((k, v) for k, v in self._buffers.items() if k != "weight_mask")
        return base

    def describe(self) -> str:
        return f"{type(self.base_layer).__name__}{tuple(self.weight.shape)}"

    def extra_repr(self) -> str:
        parts = [f"base={self.describe()}", f"active={list(self.active)}"]
        if self.merged:
            parts.append(f"merged={list(self.merged)}")
        if self.weight_mask is not None:
            parts.append("masked")
        return ", ".join(parts)
