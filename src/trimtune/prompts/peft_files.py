"""PEFT-format files for the input deltas: ``adapter_config.json`` + ``adapter_model.safetensors``.

peft stores a prompt method as one tensor, ``prompt_embeddings``: the virtual tokens (prompt tuning,
P-tuning) or the flattened key/value prefixes (prefix tuning), always in *folded* form (an encoder's
output, not the encoder), plus head copies (``modules_to_save``) under ``base_model.<module path>.*``.
So a loaded adapter is a plain table; P-tuning and projected prefixes behave identically, just
without their (training-only) encoder. Each config class gives its own fields (``to_peft_dict`` /
``from_peft_dict``); the model-dependent fields (sizes, task type) are filled in here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..api import adapter_config, apply, delete_adapter, hosts
from ..copies import ModuleCopies
from .apply import fold
from .host import prompt_host
from .model_info import kv_shape, num_layers_and_heads, token_dim
from .p_tuning import PTuningConfig
from .prefix import PrefixTuningConfig
from .prompt_tuning import PromptTuningConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_TYPES = {c.peft_type: c for c in (PromptTuningConfig, PTuningConfig, PrefixTuningConfig)}
TASK_TYPES = (
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
)


def task_type(model: nn.Module) -> str:
    """The peft task type (which PeftModel subclass peft builds) from the model's class name."""
    cls = type(model).__name__
    return next((task for suffix, task in TASK_TYPES if cls.endswith(suffix)), "FEATURE_EXTRACTION")


def peft_config_dict(model: nn.Module, config) -> dict:
    layers, heads = num_layers_and_heads(model, config.peft_type)
    dim = token_dim(model, config.peft_type)
    if isinstance(config, PrefixTuningConfig):  # peft sizes prefixes by the key/value heads (GQA)
        layers, heads, head_dim = kv_shape(model, config.peft_type)
        dim = heads * head_dim
    return {
        "peft_type": config.peft_type,
        "task_type": task_type(model),
        "num_virtual_tokens": config.num_virtual_tokens,
        "num_transformer_submodules": 1,
        "num_layers": layers,
        "num_attention_heads": heads,
        "token_dim": dim,
        "inference_mode": True,
        "modules_to_save": list(config.modules_to_save) or None,
        "base_model_name_or_path": getattr(getattr(model, "config", None), "name_or_path", None) or None,
        **config.to_peft_dict(),
    }


def _write_atomic(path: Path, write) -> None:
    """Write through a temp file in the same directory, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _head_copies(model: nn.Module, name: str) -> dict[str, nn.Module]:
    return {path: host.copies[name] for path, host in hosts(model) if isinstance(host, ModuleCopies) and name in host.copies}


def save_prompt_adapter(model: nn.Module, directory: str | os.PathLike, name: str = "default") -> Path:
    """Save input-side adapter ``name`` so that ``peft.PeftModel.from_pretrained`` loads it."""
    config = adapter_config(model, name)
    if type(config) not in CONFIG_TYPES.values():
        raise TypeError(f"adapter {name!r} is a {type(config).__name__}, not a prompt method")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        tensors = {"prompt_embeddings": prompt_host(model).deltas[name].compute().detach()}
    for path, copy in _head_copies(model, name).items():
        tensors.update({f"base_model.{path}.{key}": value for key, value in copy.state_dict().items()})
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    text = json.dumps(peft_config_dict(model, config), indent=2, sort_keys=True)
    _write_atomic(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _write_atomic(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return directory


def _read(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / file).is_file():
            raise FileNotFoundError(f"{directory} has no {file}; is it an adapter directory?")
    try:
        fields = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{directory / CONFIG_FILE} is not valid JSON: {err}") from err
    peft_type = fields.get("peft_type")
    if peft_type not in CONFIG_TYPES:
        raise ValueError(f"{directory / CONFIG_FILE}: peft_type {peft_type!r} is not a prompt method; known: {sorted(CONFIG_TYPES)}")
    if fields.get("num_transformer_submodules", 1) not in (None, 1):
        raise ValueError("encoder-decoder prompt adapters (num_transformer_submodules=2) are not supported")
    return fields, load_file(str(directory / WEIGHTS_FILE))


def load_prompt_adapter(model: nn.Module, directory: str | os.PathLike, name: str = "default") -> nn.Module:
    """Load a prompt-tuning / P-tuning / prefix-tuning adapter written by peft or by ``save_prompt_adapter``."""
    directory = Path(directory)
    fields, tensors = _read(directory)
    heads = {key.removeprefix("base_model.") for key in tensors if key != "prompt_embeddings"}
    kept = [m for m in fields.get("modules_to_save") or () if any(k.startswith(m + ".") or f".{m}." in k for k in heads)]
    config = CONFIG_TYPES[fields["peft_type"]].from_peft_dict(fields, list(dict.fromkeys(kept)))
    apply(model, config, name)
    try:
        fold(model, [name])
        table = prompt_host(model).deltas[name].embedding.weight
        _copy("prompt_embeddings", table, tensors["prompt_embeddings"])
        for path, copy in _head_copies(model, name).items():
            for key, value in copy.state_dict().items():
                _copy(f"base_model.{path}.{key}", value, tensors.get(f"base_model.{path}.{key}"))
    except Exception:
        delete_adapter(model, name)
        raise
    return model


@torch.no_grad()
def _copy(key: str, target: torch.Tensor, source: torch.Tensor | None) -> None:
    if source is None:
        raise ValueError(f"the adapter file has no tensor {key!r}")
    if source.shape != target.shape:
        raise ValueError(f"tensor {key!r} has shape {tuple(source.shape)} in the file but {tuple(target.shape)} in the model")
    target.copy_(source)
