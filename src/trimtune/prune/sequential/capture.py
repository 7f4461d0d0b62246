"""The calibration activations that travel from block to block.

``capture`` runs the model on each calibration batch (``samples.Batch``: right-padded, with an attention
mask when it holds padding) until block 0 is called, records exactly what block 0 received (hidden
states plus every keyword: attention mask, position ids, rotary ``position_embeddings``) and stops
the forward by raising, so nothing after the embeddings runs. ``run_block`` replays those calls
through a block and keeps its outputs as the next block's inputs.

Each recorded call keeps its batch's real-token mask. Iterating ``BlockCalls`` makes the current
call's mask the one ``token_rows`` reads, so a forward hook inside ``for call in calls: block(**call)``
takes an activation's real-token rows without seeing the call: padding never enters a statistic.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
from torch import nn

from .samples import Batch


class _Stop(Exception):
    """Raised by the capture hook: block 0's inputs are all we need from this forward."""


def _as_keywords(signature: inspect.Signature, args, kwargs) -> dict:
    """Block arguments by name (GPT-2 and BERT pass the mask positionally), **kwargs flattened."""
    bound = signature.bind_partial(*args, **kwargs)
    call = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            call.update(value)
        else:
            call[name] = value
    return call


def _share_equal(call: dict, first: dict, hidden: str) -> None:
    """Masks and rotary tables are the same for every sample of one length: keep one copy."""
    for key, value in call.items():
        if key == hidden or key not in first:
            continue
        same = first[key]
        if torch.is_tensor(value) and torch.is_tensor(same) and value.shape == same.shape and torch.equal(value, same):
            call[key] = same
        elif isinstance(value, tuple) and isinstance(same, tuple) and len(value) == len(same) and all(
            torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b) for a, b in zip(value, same)
        ):
            call[key] = same


class _Current:
    """The real-token mask of the call being run ((batch, seq) bool), or None: every row is real.
    A plain holder, not an argument, because forward hooks only see a layer's inputs."""

    real: torch.Tensor | None = None


@contextmanager
def real_tokens(real: torch.Tensor | None):
    """Within the block, ``token_rows`` keeps the rows where ``real`` is True (None: all rows)."""
    previous, _Current.real = _Current.real, real
    try:
        yield
    finally:
        _Current.real = previous


class BlockCalls:
    """One recorded call per calibration batch; ``hidden`` names the hidden-states argument and
    ``real[i]`` is call i's real-token mask (None when it has no padding). Iterating sets each call's
    mask for ``token_rows`` while the loop body runs."""

    def __init__(self, calls: list[dict], hidden: str, real: list[torch.Tensor | None] | None = None):
        self.calls, self.hidden = calls, hidden
        self.real = list(real) if real is not None else [None] * len(calls)
        if len(self.real) != len(calls):
            raise ValueError(f"{len(calls)} calls but {len(self.real)} real-token masks")

    def __len__(self) -> int:
        return len(self.calls)

    def __iter__(self):
        for call, real in zip(self.calls, self.real):
            with real_tokens(real):
                yield call


@torch.no_grad()
def capture(model: nn.Module, first_block: nn.Module, batches: list[Batch]) -> BlockCalls:
    """Block 0's inputs for each calibration batch, one forward per batch."""
    signature = inspect.signature(first_block.forward)
    hidden = next(iter(signature.parameters))
    calls: list[dict] = []

    def hook(module, args, kwargs):
        call = _as_keywords(signature, args, kwargs)
        if calls:
            _share_equal(call, calls[0], hidden)
        calls.append(call)
        raise _Stop

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if config is not None:
        config.use_cache = False  # no attention cache: it would hold every block's keys and values
    try:
        for batch in batches:
            try:
                # no mask at all without padding: the forward is then exactly the unpadded one
                model(input_ids=batch.input_ids, **({} if batch.real is None else {"attention_mask": batch.attention_mask}))
            except _Stop:
                pass
    finally:
        handle.remove()
        if config is not None:
            config.use_cache = use_cache
    if len(calls) != len(batches):
        raise RuntimeError(f"block 0 was called {len(calls)} times for {len(batches)} batches; is it the first block?")
    return BlockCalls(calls, hidden, [batch.real for batch in batches])


def token_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of an activation ``x`` (batch, seq, features) that belong to real tokens, as a 2-D
    (tokens, features) tensor: what every statistic (Hessians, norms, means) must see, so padding
    never enters one. The mask is the current call's, set while iterating ``BlockCalls``."""
    real = _Current.real
    if real is None:
        return x.reshape(-1, x.shape[-1])
    if x.dim() != 3 or x.shape[:2] != real.shape:
        raise ValueError(f"token_rows: activation of shape {tuple(x.shape)} does not match the current call's "
                         f"(batch, seq) = {tuple(real.shape)}; it takes (batch, seq, features) activations of the block's tokens")
    return x[real]


def block_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, calls: BlockCalls) -> None:
    """Replace each call's hidden states by the block's output: the next block's inputs."""
    for call in calls:
        call[calls.hidden] = block_output(block(**call))
