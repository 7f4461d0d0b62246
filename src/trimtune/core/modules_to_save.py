"""``modules_to_save``: a module trained in full, one copy per adapter (e.g. a classification head).

The original's own tensors stay under their original state-dict keys (the wrapper shares the
original's parameter and buffer dicts); each adapter's copy lives under ``copies.<adapter>``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from .adapter_host import AdapterHost
from .row_adapters import RowAdapters, assemble, rows_for


class ModuleCopies(AdapterHost):
    mixes_rows = True

    def __init__(self, original: nn.Module):
        super().__init__()
        object.__setattr__(self, "original", original)
        # Shared dicts: one owner per tensor, and `.to()`/`.half()` on the model reach the original.
        self._parameters = original._parameters
        self._buffers = original._buffers
        self._non_persistent_buffers_set = original._non_persistent_buffers_set
        self._modules = dict(original._modules)  # children shared; `copies` added to the wrapper only
        self.copies = nn.ModuleDict()
        self.active = ()

    def add_copy(self, name: str) -> None:
        if name in self.copies:
            raise ValueError(f"{type(self.original).__name__} already has a copy for adapter {name!r}")
        duplicate = copy.deepcopy(self.original)
        for param in duplicate.parameters():
            param.requires_grad_(True)
        self.copies[name] = duplicate

    def forward(self, *args, **kwargs):
        rows = rows_for(self)
        if rows is not None:
            return self._forward_mixed(rows, *args, **kwargs)
        module = self.copies[self.active[0]] if self.active else self.original
        return module(*args, **kwargs)

    def _forward_mixed(self, rows: RowAdapters, x, *args, **kwargs):
        """Each group of examples through its adapter's copy (the original for the others); the
        module's first argument and its output carry the batch in their first dimension."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"a mixed batch through {type(self.original).__name__} needs its input as the first argument, "
                            f"a tensor whose first dimension is the batch; got {type(x).__name__}")
        parts = []
        for name, idx in rows.indices(x.shape[0], x.device, type(self.original).__name__).items():
            module = self.copies[name] if name in self.copies else self.original
            parts.append((idx, module(x[idx], *args, **kwargs)))
        if not all(isinstance(part, torch.Tensor) for _, part in parts):
            raise TypeError(f"a mixed batch through {type(self.original).__name__} needs a tensor output to reassemble")
        return assemble(parts, x.shape[0])

    def set_active(self, names: Iterable[str]) -> None:
        self.active = tuple(n for n in names if n in self.copies)[:1]

    def adapter_names(self) -> list[str]:
        return list(self.copies)

    def delete_adapter(self, name: str) -> None:
        del self.copies[name]
        self.active = tuple(n for n in self.active if n != name)

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.copies[name].parameters())

    def peft_tensors(self, name: str, path: str) -> dict:
        # peft saves a modules_to_save copy under the original module's keys (adapter name stripped).
        return {f"{path}.{k}": v for k, v in self.copies[name].state_dict(keep_vars=True).items()}

    def extra_repr(self) -> str:
        return f"original={type(self.original).__name__}, active={list(self.active)}"
