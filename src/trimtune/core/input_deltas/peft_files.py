"""PEFT-format files for the input deltas, plugged into ``io``'s ``save_adapter`` / ``load_adapter``.

peft stores a prompt method as one tensor, ``prompt_embeddings``: the virtual tokens (prompt tuning,
P-tuning) or the flattened key/value prefixes (prefix tuning), always in *folded* form (an encoder's
output, not the encoder), and head copies (``modules_to_save``) under ``base_model.<module path>.*``
(no ``.model.``: peft keeps a prompt-tuned model directly as ``base_model``). That does not fit io's
per-host tensor mapping (live tensors to copy into), so the three methods register these as
their own directory writer/reader (``Method.save`` / ``Method.load``). A loaded adapter is a plain table; P-tuning and projected
prefixes then behave identically, just without their training-only encoder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..adapters import adapter_config, applied
from ..io.atomic import atomic_directory, write_json, write_safetensors
from ..io.fingerprint import check_fingerprint, fingerprint
from ..io.gather import write_once
from ..io.peft_files import CONFIG_FILE, FINGERPRINT_KEY, WEIGHTS_FILE, read_config, read_tensors
from ..io.peft_format import FormatError, method_of
from ..modules_to_save import ModuleCopies
from ..state import hosts, state_of
from .apply import fold
from .host import prompt_host
from .model_info import kv_shape, num_layers_and_heads, token_dim

HEAD_PREFIX = "base_model."
TASK_TYPES = (  # which PeftModel subclass peft builds: it must be one that injects prompts
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
)


def task_type(model: nn.Module) -> str:
    cls = type(model).__name__
    return next((task for suffix, task in TASK_TYPES if cls.endswith(suffix)), "FEATURE_EXTRACTION")


def peft_config_dict(model: nn.Module, config) -> dict:
    layers, heads = num_layers_and_heads(model, config.peft_type)
    dim = token_dim(model, config.peft_type)
    if config.sizes_by_kv_heads:  # prefix tuning: peft sizes prefixes by the key/value heads (GQA)
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


def _head_copies(model: nn.Module, name: str) -> dict[str, nn.Module]:
    return {path: host.copies[name] for path, host in hosts(model) if isinstance(host, ModuleCopies) and name in host.copies}


def save_prompt_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default") -> Path:
    """Write input-side adapter ``name`` so that ``peft.PeftModel.from_pretrained`` loads it."""
    config = adapter_config(model, name)
    if name not in prompt_host(model).deltas:
        raise TypeError(f"adapter {name!r} is a {type(config).__name__}, not a prompt method")
    with torch.no_grad():
        tensors = {"prompt_embeddings": prompt_host(model).deltas[name].compute()}
    for module_path, copy in _head_copies(model, name).items():
        tensors.update({f"{HEAD_PREFIX}{module_path}.{key}": value for key, value in copy.state_dict().items()})
    metadata = {"format": "pt", FINGERPRINT_KEY: json.dumps(fingerprint(model), sort_keys=True)}

    def write(tensors):  # FSDP: sharded tensors arrive whole, written by rank 0 (io/gather.py)
        with atomic_directory(path) as tmp:
            write_safetensors(tmp / WEIGHTS_FILE, {k: v.cpu().contiguous() for k, v in tensors.items()}, metadata)
            write_json(tmp / CONFIG_FILE, peft_config_dict(model, config))

    write_once(model, tensors, write)
    return Path(path)


def load_prompt_adapter(
    model: nn.Module, path: str | os.PathLike, name: str = "default", check_base: bool = True, activate: bool = True
):
    """Load a prompt-tuning / P-tuning / prefix-tuning adapter written by peft or by trimtune; returns its config."""
    if name in state_of(model).adapters:
        raise ValueError(f"the model already has an adapter named {name!r}; load under another name or delete_adapter first")
    path = Path(path)
    fields = read_config(path)
    config_type = method_of(fields).config
    if fields.get("num_transformer_submodules") not in (None, 1):
        raise FormatError("encoder-decoder prompt adapters (num_transformer_submodules=2) are not supported")
    tensors, metadata = read_tensors(path / WEIGHTS_FILE)
    if check_base and FINGERPRINT_KEY in metadata:
        check_fingerprint(json.loads(metadata[FINGERPRINT_KEY]), model, f"the adapter in {path}")
    heads = [key.removeprefix(HEAD_PREFIX) for key in tensors if key != "prompt_embeddings"]
    kept = [m for m in fields.get("modules_to_save") or () if any(k.startswith(m + ".") or f".{m}." in k for k in heads)]
    config = config_type.from_peft_dict(fields, list(dict.fromkeys(kept)))
    with applied(model, config, name, activate=activate):
        fold(model, [name])
        _copy("prompt_embeddings", prompt_host(model).deltas[name].embedding.weight, tensors)
        for module_path, copy in _head_copies(model, name).items():
            for key, value in copy.state_dict().items():
                _copy(f"{HEAD_PREFIX}{module_path}.{key}", value, tensors)
    return config


@torch.no_grad()
def _copy(key: str, target: torch.Tensor, tensors: dict[str, torch.Tensor]) -> None:
    if key not in tensors:
        raise FormatError(f"the adapter file has no tensor {key!r} (it has {sorted(tensors)[:5]})")
    if tensors[key].shape != target.shape:
        raise FormatError(f"tensor {key} has shape {tuple(tensors[key].shape)} in the file but the model needs {tuple(target.shape)}")
    target.copy_(tensors[key])

