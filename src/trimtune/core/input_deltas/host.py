"""The one place input deltas meet the model: a ``PromptHost`` and a forward pre-hook.

No model subclass and no wrapper object: ``apply`` installs a ``PromptHost`` as the submodule
``trimtune_prompts`` of the model and registers a forward pre-hook (with kwargs) on the model itself.
The hook rewrites each call's arguments, so ``model(...)``, a training loop and ``model.generate()``
all see the virtual tokens:

- at the first step of a sequence (no cache, or an empty one), the active ``"embeddings"`` deltas are
  prepended to the input embeddings (labels get -100, token_type_ids 0 in front), and the active
  ``"cache"`` deltas are written into the (new or given, empty) ``DynamicCache`` as per-layer key/value
  prefixes;
- at every step the 2-D attention mask gets ones in front for all virtual tokens (the cache holds them);
- given ``position_ids`` are shifted by the prefix length (prefix tuning); with prompt embeddings they are
  dropped so the model numbers positions from the cache length, as peft does;
- a model whose forward names a ``num_virtual_tokens`` parameter is told how many virtual tokens lead
  its hidden states in this call (a pooling head can then leave them out: ``MeanPoolClassifier``).

``generate()`` keeps its own ``input_ids``, so the virtual tokens are never returned. Several active
input deltas combine: their tokens are concatenated in activation order.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch
from torch import nn

from ..adapter_host import AdapterHost
from .checkpointed_prefixes import CheckpointedCall
from .input_delta import InputDelta
from .model_info import cache_argument

HOST_ATTR = "trimtune_prompts"


class PromptHost(AdapterHost):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.deltas = nn.ModuleDict()
        self.active: tuple[str, ...] = ()
        object.__setattr__(self, "_signature", inspect.signature(model.forward))
        object.__setattr__(self, "_cache_argument", cache_argument(model) or "past_key_values")
        object.__setattr__(self, "_takes_count", "num_virtual_tokens" in self._signature.parameters)
        object.__setattr__(self, "_handle", model.register_forward_pre_hook(self._before_forward, with_kwargs=True))
        object.__setattr__(self, "_after", model.register_forward_hook(self._after_forward, always_call=True))
        object.__setattr__(self, "_checkpointed", None)  # the switches of a checkpointed training call

    # ---- AdapterHost ----
    def add(self, name: str, delta: InputDelta) -> None:
        self.deltas[name] = delta

    def set_active(self, names: Iterable[str]) -> None:
        self.active = tuple(n for n in names if n in self.deltas)

    def adapter_names(self) -> list[str]:
        return list(self.deltas)

    def delete_adapter(self, name: str) -> None:
        del self.deltas[name]
        self.active = tuple(n for n in self.active if n != name)

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.deltas[name].parameters())

    def detach(self) -> None:
        """Stop rewriting the model's calls (unload)."""
        self._handle.remove()
        self._after.remove()

    # ---- the hook ----
    def _before_forward(self, model: nn.Module, args: tuple, kwargs: dict):
        live = [self.deltas[n] for n in self.active]
        if not live:
            return None
        call = _as_kwargs(self._signature, args, kwargs)
        front = [d for d in live if d.side == "embeddings"]
        prefix = [d for d in live if d.side == "cache"]
        batch = _batch_size(call)
        cache = call.get(self._cache_argument)
        if cache is None or cache.get_seq_length() == 0:  # first step of a sequence
            if prefix and model.training:
                self._start_checkpointed_call(model, prefix, batch, given=cache)
            if self._checkpointed is not None:
                call[self._cache_argument] = self._checkpointed.cache
            elif prefix:
                call[self._cache_argument] = _fill_cache(model, cache, prefix, batch)
            if front:
                _prepend_embeddings(model, call, front, batch)
                if self._takes_count:
                    call["num_virtual_tokens"] = sum(d.num_virtual_tokens for d in front)
        n_virtual = sum(d.num_virtual_tokens for d in live)
        mask = call.get("attention_mask")
        if mask is not None:
            if mask.dim() != 2:
                raise ValueError(f"prompt methods need a 2-D attention mask (batch, seq); got shape {tuple(mask.shape)}")
            call["attention_mask"] = torch.cat([mask.new_ones(batch, n_virtual), mask], dim=1)
        positions = call.get("position_ids")
        if positions is not None:
            call["position_ids"] = None if front else positions + sum(d.num_virtual_tokens for d in prefix)
        return (), call

    def _start_checkpointed_call(self, model: nn.Module, prefix: list[InputDelta], batch: int, given) -> None:
        plain_tables = all(type(d).compute is InputDelta.compute for d in prefix)
        call = CheckpointedCall.start(model, lambda: _prefix_states(model, prefix, batch), reentrant_safe=plain_tables)
        if call is not None and given is not None:
            call.restore()
            raise ValueError(
                "prefix tuning trains under gradient checkpointing only without a cache of the caller's: the layers "
                f"run twice (forward and recompute) and would write into it twice; pass no {self._cache_argument}"
            )
        object.__setattr__(self, "_checkpointed", call)

    def _after_forward(self, model: nn.Module, args, output):
        call = self._checkpointed
        object.__setattr__(self, "_checkpointed", None)
        if call is not None:
            call.finish(model)

    def extra_repr(self) -> str:
        return f"active={list(self.active)}"


def _as_kwargs(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """All call arguments by name (the hook can only rewrite what it can name)."""
    bound = signature.bind_partial(*args, **kwargs).arguments
    call = {}
    for name, value in bound.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            call.update(value)
        else:
            call[name] = value
    return call


def _batch_size(call: dict) -> int:
    for key in ("input_ids", "inputs_embeds"):
        if call.get(key) is not None:
            return call[key].shape[0]
    raise ValueError("prompt methods need input_ids or inputs_embeds to know the batch size")


def _prepend_embeddings(model: nn.Module, call: dict, deltas: list[InputDelta], batch: int) -> None:
    embeds = call.get("inputs_embeds")
    if embeds is None:
        embeds = model.get_input_embeddings()(call["input_ids"])
    seq = embeds.shape[1]
    prompts = torch.cat([d.output() for d in deltas]).to(embeds.dtype)
    n = prompts.shape[0]
    call["inputs_embeds"] = torch.cat([prompts.unsqueeze(0).expand(batch, -1, -1), embeds], dim=1)
    call["input_ids"] = None
    labels = call.get("labels")
    if labels is not None and labels.dim() == 2 and labels.shape[1] == seq:  # token labels (LM), not class labels
        call["labels"] = torch.cat([labels.new_full((batch, n), -100), labels], dim=1)
    token_types = call.get("token_type_ids")
    if token_types is not None:
        call["token_type_ids"] = torch.cat([token_types.new_zeros(batch, n), token_types], dim=1)


def _fill_cache(model: nn.Module, cache, deltas: list[InputDelta], batch: int):
    from transformers import DynamicCache

    if cache is None:
        cache = DynamicCache(config=model.config)
    for layer, (keys, values) in enumerate(_prefix_states(model, deltas, batch)):
        cache.update(keys, values, layer)
    return cache


def _prefix_states(model: nn.Module, deltas: list[InputDelta], batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's (keys, values) prefix, each (batch, kv_heads, n_total, head_dim)."""
    dtype = model.get_input_embeddings().weight.dtype
    per_delta = []
    for delta in deltas:
        layers, heads, head_dim = delta.kv_shape
        flat = delta.output().to(dtype)  # (n, layers * 2 * heads * head_dim), peft's layout
        per_delta.append(flat.view(delta.num_virtual_tokens, layers * 2, heads, head_dim).permute(1, 2, 0, 3))
    kv = torch.cat(per_delta, dim=2)  # (layers * 2, heads, n_total, head_dim)
    return [
        (kv[2 * layer].unsqueeze(0).expand(batch, -1, -1, -1), kv[2 * layer + 1].unsqueeze(0).expand(batch, -1, -1, -1))
        for layer in range(kv.shape[0] // 2)
    ]


def prompt_host(model: nn.Module) -> PromptHost:
    """The model's PromptHost, installed on first use."""
    host = getattr(model, HOST_ATTR, None)
    if host is None:
        host = PromptHost(model).train(model.training)
        model.add_module(HOST_ATTR, host)
    return host
