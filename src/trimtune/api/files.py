"""``save_adapter`` / ``load_adapter``: one named adapter to or from a directory, whatever its method.

Both look the method up in the registry: a method with files of its own (prompts, the sparse diff)
writes and reads them; every other method is a weight delta stored in peft's tensor format
(``core/io/peft_files.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..core.adapters import adapter_config
from ..core.io.peft_files import load_weight_adapter, read_config, save_weight_adapter
from ..core.io.peft_format import method_of
from ..core.registry import method_for_config
from ..core.state import state_of


def save_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default") -> Path:
    """Write adapter ``name`` of ``model`` to the directory ``path`` (created or updated atomically)."""
    method = method_for_config(adapter_config(model, name))
    save = method.save or save_weight_adapter
    return Path(save(model, path, name))


def load_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default", check_base: bool = True, activate: bool = True):
    """Add the adapter stored at ``path`` to ``model`` as ``name`` and return its config.

    With ``check_base`` a trimtune-written adapter is refused (``BaseMismatchError``) when the model
    is not the base it was trained on.
    """
    if name in state_of(model).adapters:
        raise ValueError(f"the model already has an adapter named {name!r}; load under another name or delete_adapter first")
    path = Path(path)
    peft_config = read_config(path)
    method = method_of(peft_config)
    if method.load is not None:
        return method.load(model, path, name, check_base=check_base, activate=activate)
    config = method.config.from_peft_dict(peft_config)
    return load_weight_adapter(model, path, name, config, check_base=check_base, activate=activate)
