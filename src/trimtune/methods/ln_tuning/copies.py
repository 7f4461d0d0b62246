"""A norm module with one trained copy per adapter: peft's LN tuning layer in trimtune's host form.

It is a ``ModuleCopies`` (the original's tensors stay under their state-dict keys, each adapter's copy
under ``copies.<adapter>``) that stands for a target layer: its tensors are written as peft's
``<module>.ln_tuning_layers.<tensor>``, and merging folds the active copy into the original.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ...core.modules_to_save import ModuleCopies

PEFT_NAME = "ln_tuning_layers"  # peft's attribute for the copies; its files drop the adapter name after it


class NormCopies(ModuleCopies):
    is_target = True

    def __init__(self, original: nn.Module):
        super().__init__(original)
        self.merged = ()
        self._saved_base: dict[str, torch.Tensor] = {}  # the original's values while a copy is merged in

    def forward(self, *args, **kwargs):
        if self.merged:  # the copy's values are in the original already
            return self.original(*args, **kwargs)
        return super().forward(*args, **kwargs)  # the active copy, or each example's in a mixed batch

    def folds(self, name: str) -> bool:
        return name in self.copies

    def peft_tensors(self, name: str, path: str) -> dict:
        return {f"{path}.{PEFT_NAME}.{k}": v for k, v in self.copies[name].state_dict(keep_vars=True).items()}

    # ---- merging: the copy's values go into the original (one adapter at a time, as peft) ----
    @torch.no_grad()
    def merge(self, names: Iterable[str], keep_sparsity: bool = True) -> float:
        names = list(names)
        if len(names) != 1:
            raise ValueError(f"LN tuning merges one adapter at a time (a norm has one set of values); got {names}")
        originals = dict(self.original.state_dict(keep_vars=True))
        self._saved_base = {k: v.detach().clone() for k, v in originals.items()}
        for key, value in self.copies[names[0]].state_dict().items():
            originals[key].copy_(value)
        self.merged = (names[0],)
        return 0.0

    @torch.no_grad()
    def unmerge(self, names: Iterable[str] | None = None) -> None:
        for key, value in self.original.state_dict(keep_vars=True).items():
            value.copy_(self._saved_base[key])
        self._saved_base, self.merged = {}, ()

    def set_active(self, names: Iterable[str]) -> None:
        names = tuple(names)
        if self.merged and self.merged[0] not in names:
            raise ValueError(f"adapter {self.merged[0]!r} is merged into this norm; unmerge before deactivating it")
        super().set_active(names)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged:
            raise ValueError(f"adapter {name!r} is merged into this norm; unmerge it before deleting")
        super().delete_adapter(name)
