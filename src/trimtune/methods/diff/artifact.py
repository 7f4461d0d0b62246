"""A task diff on disk: ``diff_model.safetensors`` (indices + values) and ``diff_config.json``.

Per diffed tensor the file holds its kept flat indices and their values. Indices are sorted, so
they are stored as gaps in 16 bits when every gap fits (the usual case: at 0.5 % density gaps
average 200), else as absolute int32/int64. Values keep the diff's dtype unless asked otherwise.
Tensors of ``modules_to_save`` copies (a task head) are stored densely.

The JSON records the base fingerprint, the density, the diffed tensors with their shapes and the
SHA-256 of the safetensors file. Loading checks everything before it touches the model (hash,
fingerprint, names, shapes, index ranges, finite values), so a damaged or foreign file is refused
with the base and the other adapters as they were. The file names differ from PEFT's, so a diff
and LoRA adapters can share one directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from ...core.adapters import applied
from ...core.io.atomic import atomic_directory, write_bytes, write_json
from ...core.io.fingerprint import change_fingerprint, check_changes, check_fingerprint, fingerprint
from ...core.io.peft_format import FormatError
from ...core.layer_kinds import kind_class_for
from ...core.modules_to_save import ModuleCopies
from ...core.state import hosts, state_of
from .delta import DiffConfig
from .penalty import diff_deltas

FORMAT, VERSION = "trimtune-diff", 1
CONFIG_FILE = "diff_config.json"
TENSORS_FILE = "diff_model.safetensors"
VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
GAP_LIMIT = 1 << 16


# ---- index coding ----
def encode_indices(index: torch.Tensor, numel: int) -> tuple[torch.Tensor, str]:
    """Sorted flat indices -> (stored tensor, encoding name)."""
    gaps = torch.diff(index, prepend=index.new_zeros(1))
    if index.numel() and int(gaps.max()) < GAP_LIMIT:
        # int16 holds 0..65535 by wrapping (safetensors has no uint16 in every torch build).
        return torch.where(gaps >= GAP_LIMIT // 2, gaps - GAP_LIMIT, gaps).to(torch.int16), "gap16"
    return (index.to(torch.int32), "int32") if numel < 2**31 else (index.to(torch.int64), "int64")


def decode_indices(stored: torch.Tensor, encoding: str) -> torch.Tensor:
    expected = {"gap16": torch.int16, "int32": torch.int32, "int64": torch.int64}
    if encoding not in expected or stored.dtype != expected[encoding] or stored.dim() != 1:
        raise FormatError(f"indices stored as {stored.dtype} {tuple(stored.shape)} do not match the encoding {encoding!r}")
    if encoding == "gap16":
        return torch.cumsum(stored.to(torch.int64) % GAP_LIMIT, 0)
    return stored.to(torch.int64)


# ---- saving ----
def save_diff(model: nn.Module, path: str | os.PathLike, name: str = "default", values_dtype: str | None = None) -> Path:
    """Write the projected diff ``name`` to directory ``path`` (created or updated atomically)."""
    if values_dtype is not None and values_dtype not in VALUE_DTYPES:
        raise ValueError(f"values_dtype must be one of {sorted(VALUE_DTYPES)} or None (keep the diff's dtype), got {values_dtype!r}")
    deltas = diff_deltas(model, name)
    dense = [n for n, d in deltas if not d.sparse]
    if dense:
        raise ValueError(f"diff {name!r} is still dense (e.g. at {dense[0]}); call project_diffs(model, {name!r}) before saving")
    tensors, entries = {}, []
    for layer_name, delta in deltas:
        for tensor_name, shape in delta.shapes.items():
            index, values = delta.index(tensor_name), delta.values[tensor_name].detach()
            entry = {"layer": layer_name, "tensor": tensor_name, "shape": list(shape), "count": index.numel()}
            if index.numel():
                stored, entry["index_encoding"] = encode_indices(index.cpu(), math.prod(shape))
                key = f"{layer_name}.{tensor_name}"
                tensors[f"{key}.index"] = stored
                tensors[f"{key}.values"] = values.to(VALUE_DTYPES[values_dtype]) if values_dtype else values
            entries.append(entry)
    heads = _head_copies(model, name)
    for module_name, copy in heads.items():
        tensors.update({f"{module_name}.{k}": v for k, v in copy.state_dict().items()})
    data = save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    kept, total = sum(e["count"] for e in entries), sum(math.prod(e["shape"]) for e in entries)
    config = dataclasses.asdict(state_of(model).adapters[name])
    record = {
        "format": FORMAT,
        "version": VERSION,
        "base_fingerprint": {**fingerprint(model), "changes": change_fingerprint(model, name)},
        "density": kept / total,
        "kept": kept,
        "total": total,
        "modules_to_save": config["modules_to_save"],
        "heads": sorted(heads),
        "training_config": {k: v for k, v in config.items() if k not in ("targets", "modules_to_save", "artifact_sha256")},
        "diffs": entries,
        "tensors_sha256": hashlib.sha256(data).hexdigest(),
    }
    with atomic_directory(path) as tmp:
        write_bytes(tmp / TENSORS_FILE, data)
        write_json(tmp / CONFIG_FILE, record)
    return Path(path)


def _head_copies(model: nn.Module, name: str) -> dict[str, nn.Module]:
    return {n: h.copies[name] for n, h in hosts(model) if isinstance(h, ModuleCopies) and name in h.adapter_names()}


def artifact_bytes(path: str | os.PathLike) -> int:
    """Size on disk of the diff stored in directory ``path`` (both files)."""
    return sum((Path(path) / f).stat().st_size for f in (CONFIG_FILE, TENSORS_FILE))


# ---- loading ----
def load_diff(model: nn.Module, path: str | os.PathLike, name: str = "default", check_base: bool = True, activate: bool = True) -> DiffConfig:
    """Apply the diff stored at ``path`` to ``model`` in place as adapter ``name``; returns its config.

    Remove it again with ``delete_adapter(model, name)``; fold it in with ``merge``. Refused, with
    the model unchanged: a damaged file, a diff for another base (``BaseMismatchError``; skip the
    check with ``check_base=False``), a diff already applied, a name already taken."""
    path = Path(path)
    if name in state_of(model).adapters:
        raise ValueError(f"the model already has an adapter named {name!r}; load under another name or delete_adapter first")
    record, tensors, digest = _read(path)
    for other, config in state_of(model).adapters.items():
        if getattr(config, "artifact_sha256", None) == digest:
            raise ValueError(f"the diff in {path} is already applied to this model as adapter {other!r}")
    if check_base:
        check_fingerprint(record["base_fingerprint"], model, f"the diff in {path}")
    sparse = _check_diffs(model, record, tensors, path)
    heads = _check_heads(model, record, tensors, path)
    config = DiffConfig(
        density=record["density"], penalty="none", targets=list(dict.fromkeys(e["layer"] for e in record["diffs"])),
        modules_to_save=record["modules_to_save"], artifact_sha256=digest,
    )
    with applied(model, config, name, activate=activate):
        for layer_name, delta in diff_deltas(model, name):
            keep = {t: index for t, (index, _) in sparse[layer_name].items()}
            delta.to_sparse(keep, {t: values for t, (_, values) in sparse[layer_name].items()})
        for module_name, copy in _head_copies(model, name).items():
            copy.load_state_dict(heads[module_name])
        if check_base:  # a base that already holds this diff (merged and saved) would get it twice
            check_changes(record["base_fingerprint"].get("changes", {}), model, name, f"the diff in {path}")
    return config


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor], str]:
    config_file, tensors_file = path / CONFIG_FILE, path / TENSORS_FILE
    for file in (config_file, tensors_file):
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: a diff directory holds {CONFIG_FILE} and {TENSORS_FILE}")
    try:
        record = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(f"{config_file} is not valid JSON ({err})") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise FormatError(f"{config_file} is not a {FORMAT} version {VERSION} record")
    missing = {"base_fingerprint", "density", "diffs", "heads", "modules_to_save", "tensors_sha256"} - set(record)
    if missing:
        raise FormatError(f"{config_file} lacks {sorted(missing)}")
    data = tensors_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["tensors_sha256"]:
        raise FormatError(f"{tensors_file} is corrupt or truncated: its SHA-256 differs from the one {CONFIG_FILE} records")
    try:
        tensors = load_tensors(data)
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise FormatError(f"{tensors_file} is not a readable safetensors file: {err}") from err
    return record, tensors, digest


def _check_diffs(model, record, tensors, path) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """layer -> tensor -> (indices, values), each checked against the model; raises before any change."""
    out: dict[str, dict] = {}
    used = set()
    for entry in record["diffs"]:
        layer_name, tensor_name, shape = entry["layer"], entry["tensor"], tuple(entry["shape"])
        where = f"{layer_name}.{tensor_name} in {path}"
        base = _base_tensor(model, layer_name, tensor_name, where)
        if tuple(base.shape) != shape:
            raise FormatError(f"{where} is a diff for shape {shape} but the model's tensor is {tuple(base.shape)}")
        count = entry["count"]
        index, values = torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        if count:
            key = f"{layer_name}.{tensor_name}"
            if f"{key}.index" not in tensors or f"{key}.values" not in tensors:
                raise FormatError(f"{where}: the tensor file lacks {key}.index / {key}.values")
            used.update((f"{key}.index", f"{key}.values"))
            try:
                index = decode_indices(tensors[f"{key}.index"], entry.get("index_encoding"))
            except FormatError as err:
                raise FormatError(f"{where}: {err}") from None
            values = tensors[f"{key}.values"]
        _check_sparse(index, values, count, math.prod(shape), where)
        out.setdefault(layer_name, {})[tensor_name] = (index, values.to(base.dtype))
    heads = tuple(f"{m}." for m in record["heads"])
    unexpected = sorted(k for k in set(tensors) - used if not k.startswith(heads))
    if unexpected:
        raise FormatError(f"{path / TENSORS_FILE} has tensors its record does not list, e.g. {unexpected[:3]}")
    return out


def _base_tensor(model, layer_name, tensor_name, where) -> torch.Tensor:
    """The model's weight or bias a diff entry is for (a wrapper keeps them under the same names)."""
    try:
        module = model.get_submodule(layer_name)
    except AttributeError:
        raise FormatError(f"{where}: the model has no module {layer_name!r} (a diff for another architecture?)") from None
    if kind_class_for(getattr(module, "base_layer", module)) is None:
        raise FormatError(f"{where}: {layer_name} is a {type(module).__name__}, not a layer a diff can change")
    tensor = module._parameters.get(tensor_name) if tensor_name in ("weight", "bias") else None
    if tensor is None:
        raise FormatError(f"{where}: the model's {layer_name} has no {tensor_name}")
    return tensor


def _check_sparse(index, values, count, numel, where) -> None:
    if index.numel() != count or values.shape != (count,):
        raise FormatError(f"{where}: expected {count} indices and values, found {index.numel()} and {tuple(values.shape)}")
    if count and (int(index[0]) < 0 or int(index[-1]) >= numel):
        raise FormatError(f"{where}: indices run from {int(index[0])} to {int(index[-1])} but the tensor has {numel} entries")
    if count > 1 and not bool((index[1:] > index[:-1]).all()):
        raise FormatError(f"{where}: indices are not strictly increasing (duplicated or damaged)")
    if not values.is_floating_point() or not bool(torch.isfinite(values).all()):
        raise FormatError(f"{where}: values must be finite floating-point numbers")


def _check_heads(model, record, tensors, path) -> dict[str, dict[str, torch.Tensor]]:
    """module -> its state dict from the file, checked against the module's own keys and shapes."""
    heads = {}
    for head in record["heads"]:
        try:
            module = model.get_submodule(head)
        except AttributeError:
            raise FormatError(f"{path} stores the trained module {head!r} but the model has none") from None
        expected = (module.original if isinstance(module, ModuleCopies) else module).state_dict()
        found = {k[len(head) + 1 :]: v for k, v in tensors.items() if k.startswith(head + ".")}
        if set(found) != set(expected) or any(found[k].shape != expected[k].shape for k in expected):
            raise FormatError(f"{path}: the stored tensors of {head!r} do not fit the model's {type(module).__name__}")
        heads[head] = found
    return heads
