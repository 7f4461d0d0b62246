"""Save and reload a shrunk model: tensors in safetensors, the shrink history in JSON, no pickle.

A shrunk model records (on ``model._trimtune_shrink``) the configuration it started from and every
slice taken. Reloading rebuilds the original architecture, replays the history — so layers of
different widths come back without the user rebuilding anything — and loads the tensors. Hugging
Face models are saved with ``save_pretrained``; when every layer was shrunk alike the stock config
describes the new widths and plain ``from_pretrained`` works too (Llama-style configs).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..core.input_deltas.host import HOST_ATTR as PROMPT_HOST
from ..core.io.atomic import atomic_directory
from ..core.io.safetensors_files import read_safetensors
from . import transformer_groups as hf
from .apply import replay

HISTORY_FILE = "shrink_history.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "trimtune-shrink/1"
STATE_ATTR = "_trimtune_shrink"


def record(model: nn.Module, history: list[dict]) -> None:
    """Remember the original config (first shrink only) and append the slices taken."""
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        config = getattr(model, "config", None)
        state = {
            "architecture": type(model).__name__,
            "original_config": config.to_dict() if config is not None else None,
            "history": [],
        }
        object.__setattr__(model, STATE_ATTR, state)
    state["history"].extend(history)


def save_shrunk(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the shrunk base (its new shapes and the replayable history). Adapters on it are not base
    tensors: ``trimtune.save_shrunk`` writes them beside it, in their own files."""
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        raise ValueError("this model was not shrunk by trimtune (no shrink history); save it the usual way")
    base = base_state(model)
    with atomic_directory(path) as tmp:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp, safe_serialization=True, state_dict=base)
        else:
            tensors, seen = {}, set()
            for name, tensor in base.items():
                if tensor.data_ptr() not in seen:  # tied weights once
                    seen.add(tensor.data_ptr())
                    tensors[name] = tensor.contiguous()
            save_file(tensors, tmp / WEIGHTS_FILE)
        (tmp / HISTORY_FILE).write_text(json.dumps({"format": FORMAT, **state}))
    return Path(path)


def base_state(model: nn.Module) -> dict:
    """The model's state dict without adapter tensors or trimtune's own hosts: the shrunk base (the
    wrappers keep it under its original keys) and its pruning masks."""
    adapter_parts = (".deltas.", ".copies.", f"{PROMPT_HOST}.")
    return {k: v for k, v in model.state_dict().items() if not any(part in f".{k}" for part in adapter_parts)}


def load_shrunk(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Reload a shrunk model. ``model``: a fresh copy of the ORIGINAL model, needed for plain
    nn.Modules (Hugging Face models are rebuilt from the recorded config)."""
    path = Path(path)
    history_path = path / HISTORY_FILE
    if not history_path.is_file():
        raise FileNotFoundError(
            f"{path} has no {HISTORY_FILE}: it was not saved by trimtune's save_shrunk, so the layer widths "
            "cannot be rebuilt; save the shrunk model with trimtune.save_shrunk"
        )
    try:
        state = json.loads(history_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{history_path} is not valid JSON ({err}); the file is corrupt") from err
    if state.get("format") != FORMAT:
        raise ValueError(f"{history_path} has format {state.get('format')!r}; this trimtune reads {FORMAT!r}")
    tensors = _read_tensors(path)  # an unreadable file is refused before the model changes
    if model is None:
        model = _rebuild_hf(state, path)
    else:  # the caller's model: the whole replay and the shapes are checked on a weightless copy first
        _check_tensors(_replayed(_meta_copy(model), state), tensors, path)
    _load_tensors(_replayed(model, state), tensors, path)
    state.pop("format")
    object.__setattr__(model, STATE_ATTR, state)
    return model.eval()  # as from_pretrained returns a model


def _rebuild_hf(state: dict, path: Path) -> nn.Module:
    config_dict = state.get("original_config")
    if not config_dict:
        raise ValueError(f"{path} holds a plain nn.Module; pass model= (a fresh copy of the original model)")
    import transformers

    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **config_dict)
    architecture = state.get("architecture")
    model_cls = getattr(transformers, architecture, None) if architecture else None
    if model_cls is None:
        raise ValueError(f"cannot rebuild architecture {architecture!r} from {path}; pass model=")
    return model_cls(config)


def _replayed(model: nn.Module, state: dict) -> nn.Module:
    replay(model, state["history"])
    if hf.supports(model):
        hf.after_shrink(model)
    return model


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers live on the meta device: shapes only, no memory."""
    memo = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _read_tensors(path: Path) -> dict:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no .safetensors weights")
    tensors = {}
    for file in files:
        tensors.update(read_safetensors(file, "shrunk model's weights file")[0])
    return tensors


def _check_tensors(model: nn.Module, tensors: dict, path: Path) -> None:
    expected = model.state_dict()
    for name, tensor in tensors.items():
        if name in expected and expected[name].shape != tensor.shape:
            raise ValueError(
                f"{name} is {tuple(tensor.shape)} in {path} but {tuple(expected[name].shape)} in the rebuilt model: "
                "the shrink history does not match these weights"
            )


def _load_tensors(model: nn.Module, tensors: dict, path: Path) -> None:
    _check_tensors(model, tensors, path)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # the file holds the base only: adapters a model already carries were sliced by the replay, and
    # ``trimtune.load_shrunk`` loads the saved ones from their own files
    base = base_state(model)
    missing = {n for n in missing if n in base and not _is_tied(model, n)}
    if missing or unexpected:
        raise ValueError(f"weights in {path} do not match the model: missing {sorted(missing)[:5]}, unexpected {unexpected[:5]}")


def _is_tied(model: nn.Module, name: str) -> bool:
    """A tensor absent from the file because it shares storage with one that is present."""
    state = model.state_dict()
    return any(other != name and state[other].data_ptr() == state[name].data_ptr() for other in state)
