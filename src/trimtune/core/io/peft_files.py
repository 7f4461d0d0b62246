"""Adapter directories in the PEFT format: ``adapter_config.json`` + ``adapter_model.safetensors``.

The writer and reader of weight-delta adapters (LoRA, AdaLoRA, IA3, ...): one named adapter is
written so that ``peft.PeftModel.from_pretrained(base, path)`` loads it, and what trimtune or peft
wrote is read back (``Method.save`` / ``load`` default to these (``core/method.py``)). The base model's fingerprint rides in
the safetensors metadata (peft ignores metadata; an extra key in adapter_config.json would make
peft warn on every load). Files written by peft carry no fingerprint and load unchecked.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..adapters import adapter_config, applied
from ..state import hosts
from .atomic import atomic_directory, write_json, write_safetensors
from .fingerprint import change_fingerprint, check_changes, check_fingerprint, fingerprint
from .gather import write_once
from .peft_format import PREFIX, FormatError, bias_tensors, to_peft_config
from .safetensors_files import UnreadableFileError, read_safetensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FINGERPRINT_KEY = "trimtune_base_fingerprint"
_PEFT_INTERNAL = (".original_module.", ".modules_to_save.")


def save_weight_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default") -> Path:
    """Write weight-delta adapter ``name``: peft's config fields and its tensors under peft's keys.

    Under FSDP every rank must call it: the sharded tensors are gathered whole and rank 0 writes."""
    config = adapter_config(model, name)
    carriers = layers_with(model, name)
    peft_config = to_peft_config(model, config, name, carriers)
    record = {**fingerprint(model), "changes": change_fingerprint(model, name)}
    metadata = {"format": "pt", FINGERPRINT_KEY: json.dumps(record, sort_keys=True)}

    def write(tensors):
        with atomic_directory(path) as tmp:
            write_safetensors(tmp / WEIGHTS_FILE, tensors, metadata)
            write_json(tmp / CONFIG_FILE, peft_config)

    write_once(model, adapter_tensors(model, config, name), write)
    return Path(path)


def load_weight_adapter(model: nn.Module, path: Path, name: str, config, check_base: bool = True, activate: bool = True):
    """Add weight-delta adapter ``name`` described by ``config`` and fill it from ``path``'s tensors."""
    config = fit_modules_to_save(model, config)
    tensors, metadata = read_tensors(path / WEIGHTS_FILE)
    saved = json.loads(metadata[FINGERPRINT_KEY]) if check_base and FINGERPRINT_KEY in metadata else None
    if saved is not None:
        check_fingerprint(saved, model, f"the adapter in {path}")
    with applied(model, config, name, activate=activate):
        _copy_into(adapter_tensors(model, config, name), tensors, path / WEIGHTS_FILE)
        if saved is not None:  # now that the adapter's change is known: refuse a base that already holds it
            check_changes(saved.get("changes", {}), model, name, f"the adapter in {path}")
    return config


def adapter_tensors(model: nn.Module, config, name: str) -> dict[str, torch.Tensor]:
    """The live tensors of adapter ``name`` under the keys peft uses in its adapter file."""
    tensors = {}
    for module_name, host in hosts(model):
        if name in host.adapter_names():
            tensors.update(host.peft_tensors(name, PREFIX + module_name))
    for key, bias in bias_tensors(model, config, name, layers_with(model, name)).items():
        tensors.setdefault(key, bias)  # a head copy's bias is the head's bias for this adapter
    return tensors


def layers_with(model: nn.Module, name: str) -> dict[str, nn.Module]:
    """The target layers carrying adapter ``name`` (wrappers, or a method's own host such as LN tuning's)."""
    return {n: host for n, host in hosts(model) if host.is_target and name in host.adapter_names()}


def read_config(path: Path) -> dict:
    if not path.is_dir():
        raise FileNotFoundError(f"adapter directory {path} does not exist (expected {CONFIG_FILE} and {WEIGHTS_FILE} in it)")
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(f"{file} is not valid JSON ({err})") from err


def read_tensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        return read_safetensors(file, "adapter weights file")
    except UnreadableFileError as err:
        raise FormatError(str(err)) from err


def fit_modules_to_save(model: nn.Module, config):
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
