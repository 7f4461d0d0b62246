"""Adapter directories in the PEFT format: ``adapter_config.json`` + ``adapter_model.safetensors``.

``save_adapter`` writes one named adapter so that ``peft.PeftModel.from_pretrained(base, path)``
loads it; ``load_adapter`` reads what trimtune or peft wrote. The base model's fingerprint rides in
the safetensors metadata (peft ignores metadata; an extra key in adapter_config.json would make
peft warn on every load). Files written by peft carry no fingerprint and load unchecked.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..api import adapter_config, applied, delete_adapter, hosts, layers, state_of
from .atomic import atomic_directory, write_json, write_safetensors
from .fingerprint import check_fingerprint, fingerprint
from .gather import write_once
from .peft_format import FILE_HANDLERS, PREFIX, FormatError, bias_tensors, config_type_of, to_peft_config

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FINGERPRINT_KEY = "trimtune_base_fingerprint"
_PEFT_INTERNAL = (".original_module.", ".modules_to_save.")


def save_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default") -> Path:
    """Write adapter ``name`` of ``model`` to the directory ``path`` (created or updated atomically).

    Under FSDP every rank must call it: the sharded tensors are gathered whole and rank 0 writes."""
    config = adapter_config(model, name)
    if type(config) in FILE_HANDLERS:
        return Path(FILE_HANDLERS[type(config)][0](model, path, name))
    carriers = _layers_with(model, name)
    peft_config = to_peft_config(model, config, name, carriers)
    metadata = {"format": "pt", FINGERPRINT_KEY: json.dumps(fingerprint(model), sort_keys=True)}

    def write(tensors):
        with atomic_directory(path) as tmp:
            write_safetensors(tmp / WEIGHTS_FILE, tensors, metadata)
            write_json(tmp / CONFIG_FILE, peft_config)

    write_once(model, adapter_tensors(model, config, name), write)
    return Path(path)


def load_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default", check_base: bool = True, activate: bool = True):
    """Add the adapter stored at ``path`` to ``model`` as ``name`` and return its config.

    With ``check_base`` a trimtune-written adapter is refused (``BaseMismatchError``) when the model
    is not the base it was trained on.
    """
    if name in state_of(model).adapters:
        raise ValueError(f"the model already has an adapter named {name!r}; load under another name or delete_adapter first")
    path = Path(path)
    peft_config = _read_config(path)
    config_type = config_type_of(peft_config)
    if config_type in FILE_HANDLERS:
        return FILE_HANDLERS[config_type][1](model, path, name, check_base=check_base, activate=activate)
    config = _fit_modules_to_save(model, config_type.from_peft_dict(peft_config))
    tensors, metadata = _read_tensors(path / WEIGHTS_FILE)
    if check_base and FINGERPRINT_KEY in metadata:
        check_fingerprint(json.loads(metadata[FINGERPRINT_KEY]), model, f"the adapter in {path}")
    with applied(model, config, name, activate=activate):
        _copy_into(adapter_tensors(model, config, name), tensors, path / WEIGHTS_FILE)
    return config


def adapter_tensors(model: nn.Module, config, name: str) -> dict[str, torch.Tensor]:
    """The live tensors of adapter ``name`` under the keys peft uses in its adapter file."""
    tensors = {}
    for module_name, host in hosts(model):
        if name in host.adapter_names():
            tensors.update(host.peft_tensors(name, PREFIX + module_name))
    for key, bias in bias_tensors(model, config, name, _layers_with(model, name)).items():
        tensors.setdefault(key, bias)  # a head copy's bias is the head's bias for this adapter
    return tensors


def _layers_with(model: nn.Module, name: str) -> dict[str, nn.Module]:
    return {n: layer for n, layer in layers(model) if name in layer.deltas}


def _read_config(path: Path) -> dict:
    if not path.is_dir():
        raise FileNotFoundError(f"adapter directory {path} does not exist (expected {CONFIG_FILE} and {WEIGHTS_FILE} in it)")
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(f"{file} is not valid JSON ({err})") from err


def _read_tensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise FormatError(f"{file} is not a readable safetensors file (corrupt or truncated?): {err}") from err


def _fit_modules_to_save(model: nn.Module, config):
    """Keep the modules_to_save entries this model has: peft writes every name its task might use
    (``classifier`` and ``score`` for sequence classification) and skips those that are absent."""
    wanted = getattr(config, "modules_to_save", None)
    if wanted:
        names = [n for n, _ in model.named_modules()]
        present = [w for w in wanted if any(n == w or n.endswith("." + w) for n in names)]
        config.modules_to_save = list(dict.fromkeys(present))
    return config


def _copy_into(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], file: Path) -> None:
    """Check every tensor first, then copy: a failed load changes nothing."""
    missing = [k for k in expected if k not in found]
    if missing:
        raise FormatError(
            f"{file} lacks {len(missing)} tensor(s) this adapter needs on this model, e.g. {missing[:3]} "
            f"(the file has {len(found)} tensors, e.g. {list(found)[:3]}): made for another model?"
        )
    for key, target in expected.items():
        if tuple(found[key].shape) != tuple(target.shape):
            raise FormatError(
                f"tensor {key} in {file} has shape {tuple(found[key].shape)} but the model needs {tuple(target.shape)}"
            )
    # peft's bias="all" also saves its head wrapper's internal copies; the head's real keys are loaded.
    unexpected = sorted(k for k in set(found) - set(expected) if not any(s in k for s in _PEFT_INTERNAL))
    if unexpected:
        warnings.warn(f"{file}: ignored {len(unexpected)} tensor(s) the model has no place for, e.g. {unexpected[:3]}", stacklevel=3)
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(found[key])
