"""Shared by the input-delta methods: put a delta on the model's PromptHost (plus head copies)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import nn

from ..adapters import add_head_copies, all_or_nothing, set_adapter
from ..config import ConfigError, check_positive_int
from ..state import state_of
from .host import prompt_host
from .input_delta import InputDelta


def check_prompt_fields(config) -> None:
    check_positive_int("num_virtual_tokens", config.num_virtual_tokens)
    if isinstance(config.modules_to_save, str) or not isinstance(config.modules_to_save, Sequence):
        raise ConfigError(f"modules_to_save must be a list of module names, got {config.modules_to_save!r}")


def check_text_init(config) -> None:
    """init="TEXT" (prompt and prefix tuning) needs the text and a tokenizer to read it."""
    if config.init != "TEXT":
        return
    if not config.init_text:
        raise ConfigError("init='TEXT' needs init_text (the text whose tokens start the virtual tokens)")
    if config.tokenizer is None:
        raise ConfigError("init='TEXT' needs a tokenizer: set tokenizer to a tokenizer directory or a tokenizer object")
    if not isinstance(config.tokenizer, str) and not callable(config.tokenizer):
        raise ConfigError(f"tokenizer must be a tokenizer directory (a path string) or a tokenizer object, got "
                          f"{type(config.tokenizer).__name__} {config.tokenizer!r}")


def text_token_ids(tokenizer, text: str, n: int, vocab_size: int, special_tokens: bool = True) -> torch.Tensor:
    """The ids of ``text``'s tokens, repeated or truncated to ``n`` (``tokenizer``: a path or a tokenizer object;
    ``special_tokens=False`` is passed on as ``add_special_tokens=False``: no [CLS]/[SEP] or BOS); each must
    be below ``vocab_size``, the model's embedding rows."""
    if isinstance(tokenizer, str):
        tokenizer = _load_tokenizer(tokenizer)
    ids = list((tokenizer(text) if special_tokens else tokenizer(text, add_special_tokens=False))["input_ids"])
    if not ids:
        raise ConfigError(f"init_text {text!r} tokenizes to no tokens")
    if max(ids) >= vocab_size:
        raise ConfigError(f"the tokenizer reads init_text {text!r} as token id {max(ids)}, but the model embeds only {vocab_size} "
                          "token ids: it is not this model's tokenizer; use the model's own (its directory usually holds one)")
    return torch.tensor((ids * math.ceil(n / len(ids)))[:n])


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer  # loaded only when a text init needs it (seconds to import)

    advice = "give the directory of a saved tokenizer (the model's own directory usually holds one)"
    if (os.path.isabs(path) or path.startswith((".", "~"))) and not os.path.isdir(os.path.expanduser(path)):
        raise ConfigError(f"tokenizer {path!r} does not exist; {advice}")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:  # the hub's "Repo id must be ..." for a path that is not a directory
        raise ConfigError(f"tokenizer {path!r} is not a tokenizer directory ({type(err).__name__}: {str(err).splitlines()[0]}); "
                          f"{advice}") from None


def add_input_delta(model: nn.Module, name: str, delta: InputDelta, modules_to_save: Sequence[str]) -> None:
    device = model.get_input_embeddings().weight.device
    with all_or_nothing(model, name):
        prompt_host(model).add(name, delta.to(device).train(model.training))
        add_head_copies(model, name, modules_to_save)


def fold(model: nn.Module, names: Sequence[str] | None = None) -> None:
    """Replace the encoders of input deltas (P-tuning's MLP/LSTM, prefix tuning's MLP) by their output:
    same forward, fewer parameters, nothing re-run. What peft saves is this folded form."""

    host = prompt_host(model)
    for name in host.adapter_names() if names is None else names:
        if name not in host.deltas:
            raise KeyError(f"no input-side adapter named {name!r}; the model has {host.adapter_names()}")
        host.deltas[name] = host.deltas[name].folded()
    if state_of(model).active:
        set_adapter(model, state_of(model).active)  # the new tables train iff their adapter is active
