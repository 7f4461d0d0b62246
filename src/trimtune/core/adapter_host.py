"""What every module that carries named adapters does: the weight wrapper (``TunedLayer``), the
copies of ``modules_to_save`` and the input-delta host all switch, delete and list adapters the
same way, so the model-level verbs treat them alike."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class AdapterHost(nn.Module):
    """A module that carries named adapters and switches between them (wrappers, head copies, prompts)."""

    active: tuple[str, ...] = ()
    merged: tuple[str, ...] = ()  # adapters folded into the base (see ``folds``)
    # True for a host standing where a target layer of its method stood (the weight wrapper, LN tuning's
    # norm copies): adapter_config.json's target_modules lists these (head copies and prompts are no targets).
    is_target: bool = False
    # True for a host that can run each example of a batch with its own adapter (``core/mixed_batch.py``):
    # it looks its routing up with ``row_adapters.rows_for(self)`` in its forward.
    mixes_rows: bool = False

    def set_active(self, names: Iterable[str]) -> None:
        raise NotImplementedError

    def adapter_names(self) -> list[str]:
        raise NotImplementedError

    def delete_adapter(self, name: str) -> None:
        raise NotImplementedError

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        raise NotImplementedError

    def peft_tensors(self, name: str, path: str) -> dict[str, torch.Tensor]:
        """The live tensors of adapter ``name`` keyed as peft's adapter file names them; ``path`` is
        this module's peft prefix (``base_model.model.<module name>``). Saving writes them, loading
        copies into them (see ``trimtune.core.io.peft_files``)."""
        raise NotImplementedError(f"{type(self).__name__} adapters have no PEFT file format")

    def folds(self, name: str) -> bool:
        """Whether ``merge`` folds adapter ``name`` into the base here (a head copy or a prompt has
        nothing to fold: the trained module itself stays in place)."""
        return False

    def merge(self, names: Iterable[str], keep_sparsity: bool = True) -> float:
        """Fold adapters ``names`` (each ``folds``) into the base; returns the share a mask dropped (0.0)."""
        raise NotImplementedError(f"{type(self).__name__} has no adapter to fold into a weight")

    def unmerge(self, names: Iterable[str] | None = None) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no adapter to fold into a weight")

    def detach(self) -> None:
        """Undo whatever the host installed besides itself (e.g. a forward hook); called by unload."""


class DeltaHost(AdapterHost):
    """A host keeping each adapter's change in ``self.deltas[name]`` and folding it into its base
    (``TunedLayer``'s delta per layer, ``ParameterHost``'s deltas per parameter): switching, listing
    and deleting adapters are the same for both. A subclass sets ``deltas``, ``active`` and ``merged``
    and gives ``_refresh`` (re-cache what the forward runs) and ``describe`` (for messages)."""

    def set_active(self, names: Iterable[str]) -> None:
        names = tuple(names)
        if any(n in self.merged and n not in names for n in self.active):
            raise ValueError(f"cannot deactivate adapters merged into {self.describe()}; unmerge first")
        self.active = tuple(n for n in names if n in self.deltas)
        self._refresh()

    def adapter_names(self) -> list[str]:
        return list(self.deltas)

    def folds(self, name: str) -> bool:
        return name in self.deltas

    def delete_adapter(self, name: str) -> None:
        if name in self.merged:
            raise ValueError(f"adapter {name!r} is merged into {self.describe()}; unmerge it before deleting")
        del self.deltas[name]
        self.active = tuple(n for n in self.active if n != name)
        self._refresh()

    def _refresh(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def take_over_tensors(host: nn.Module, base: nn.Module) -> None:
    """Move ``base``'s own parameters and buffers onto ``host`` under the same names: one owner for each
    tensor, and a host standing where ``base`` stood keeps the model's state-dict keys unchanged."""
    for name, param in list(base._parameters.items()):
        host.register_parameter(name, param)
    for name, buf in list(base._buffers.items()):
        host.register_buffer(name, buf, persistent=name not in base._non_persistent_buffers_set)
    base._parameters.clear()
    base._buffers.clear()
