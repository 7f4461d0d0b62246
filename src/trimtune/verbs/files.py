"""``save_adapter`` / ``load_adapter``: one named adapter to or from a directory, whatever its method.

Both look the method up in the registry: a method with files of its own (prompts, the sparse diff)
writes and reads them; every other method is a weight delta stored in peft's tensor format
(``core/io/peft_files.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from ..core.adapters import adapter_config, set_adapter
from ..core.io.atomic import write_json
from ..core.io.peft_files import read_config
from ..core.io.peft_format import method_of
from ..core.registry import method_for_config, method_named
from ..core.state import state_of
from ..shrinking import files as shrink_files


def save_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default") -> Path:
    """Write adapter ``name`` of ``model`` to the directory ``path`` (created or updated atomically)."""
    return Path(method_for_config(adapter_config(model, name)).save(model, path, name))


def load_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default", check_base: bool = True, activate: bool = True):
    """Add the adapter stored at ``path`` to ``model`` as ``name`` and return its config.

    With ``check_base`` a trimtune-written adapter is refused (``BaseMismatchError``) when the model
    is not the base it was trained on.
    """
    if name in state_of(model).adapters:
        raise ValueError(f"the model already has an adapter named {name!r}; load under another name or delete_adapter first")
    path = Path(path)
    method = method_of(read_config(path))
    return method.load(model, path, name, check_base=check_base, activate=activate)


ADAPTERS_DIR = "adapters"  # in a shrunk model's directory: one sub-directory per adapter, plus index.json


def save_shrunk(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write a shrunk model: its base with the new shapes (loadable by ``load_shrunk``) and, when it
    carries adapters, each of them in its own format (PEFT for LoRA & co.) sized to the new shapes."""
    path = shrink_files.save_shrunk(model, path)
    state = state_of(model)
    if state.adapters:
        folder = path / ADAPTERS_DIR
        for name, config in state.adapters.items():
            save_adapter(model, folder / name, name)
        index = {"order": list(state.adapters), "active": list(state.active),
                 "methods": {name: method_for_config(config).name for name, config in state.adapters.items()}}
        write_json(folder / "index.json", index)
    return path


def load_shrunk(path: str | os.PathLike, model: nn.Module | None = None, with_adapters: bool = True) -> nn.Module:
    """Reload what ``save_shrunk`` wrote: the shrunk base, then its adapters (active as they were).
    ``with_adapters=False`` only replays the slices onto ``model``, which may carry its adapters already."""
    path = Path(path)
    model = shrink_files.load_shrunk(path, model)
    index_file = path / ADAPTERS_DIR / "index.json"
    if not with_adapters or not index_file.is_file():
        return model
    try:
        index = json.loads(index_file.read_text())
        order, active, methods = index["order"], index["active"], index["methods"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{index_file} is damaged ({err}); it lists the shrunk model's adapters") from err
    for name in order:
        method_named(methods[name]).load(model, path / ADAPTERS_DIR / name, name, activate=False)
    if active:
        set_adapter(model, active)
    return model.eval()
