"""Mixed-adapter batches: each example of a batch runs with its own adapter (peft's ``adapter_names``).

``with mixed_batch(model, ["fr", "__base__", "de"]): model.generate(ids)`` runs row 0 with adapter
``fr``, row 1 with no adapter and row 2 with ``de``, as three separate runs would, inside the block
and in this thread only (``core/row_adapters.py``). peft passes ``adapter_names`` as a forward keyword
through its model wrapper; trimtune has no wrapper, and a keyword would have to cross every model's
forward and ``generate``'s argument checks, so the routing rides on the call instead.

Everything is checked before the block runs; a batch of another size than the list is refused by the
first layer it reaches, before anything is computed with the wrong rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from torch import nn

from .row_adapters import BASE, RowAdapters, routed
from .state import hosts, state_of


@contextlib.contextmanager
def mixed_batch(model: nn.Module, names: Sequence[str]):
    """Inside the block, example ``i`` of every batch runs with adapter ``names[i]`` (``"__base__"``: none)."""
    names = _checked_names(model, names)
    _check_model(model, names)
    with routed([host for _, host in hosts(model) if host.mixes_rows], RowAdapters(names)):
        yield model


def _checked_names(model: nn.Module, names) -> list[str]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"mixed_batch takes a list of adapter names, one per example; got {type(names).__name__} {names!r}")
    names = list(names)
    if not names:
        raise ValueError("mixed_batch needs one adapter name per example; the list is empty")
    known = list(state_of(model).adapters)
    for name in names:
        if not isinstance(name, str) or (name != BASE and name not in known):
            raise ValueError(f"mixed_batch: unknown adapter {name!r}; the model has {known} "
                             f"(or {BASE!r} for an example without adapter)")
    return names


def _check_model(model: nn.Module, names: list[str]) -> None:
    if model.training:
        raise ValueError("mixed_batch is for inference: call model.eval() first (a training step runs the active adapters)")
    merged = sorted({n for _, host in hosts(model) for n in host.merged})
    if merged:
        raise ValueError(f"adapters {merged} are merged into the weights, so every example would get them; "
                         "unmerge(model) before a mixed batch")
    used = set(names) - {BASE}
    for host_name, host in hosts(model):
        if host.mixes_rows:
            continue
        # A host that runs the whole batch at once would give its adapter to every example: refuse
        # one named in the list, and one that is active (it would not stay out of the other rows).
        unfit = sorted((used & set(host.adapter_names())) | set(host.active))
        if unfit:
            methods = sorted({type(state_of(model).adapters[n]).__name__ for n in unfit})
            raise ValueError(f"adapters {unfit} ({', '.join(methods)}) cannot be mixed in a batch: {type(host).__name__} "
                             f"at {host_name or 'the model'} runs the whole batch at once (prompt and prefix adapters "
                             "change the input, not a layer); mix weight adapters only (LoRA, DoRA, IA3, LoHa, ...), "
                             "with no such adapter active (set_adapter)")
