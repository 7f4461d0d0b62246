"""The calibration activations that travel from block to block.

``capture`` runs the model on each calibration sample until block 0 is called, records exactly what
block 0 received (hidden states plus every keyword: attention mask, position ids, rotary
``position_embeddings``) and stops the forward by raising, so nothing after the embeddings runs.
``run_block`` replays those calls through a block and keeps its outputs as the next block's inputs.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


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


class BlockCalls:
    """One recorded call per calibration sample; ``hidden`` names the hidden-states argument."""

    def __init__(self, calls: list[dict], hidden: str):
        self.calls, self.hidden = calls, hidden

    def __len__(self) -> int:
        return len(self.calls)

    def __iter__(self):
        return iter(self.calls)


@torch.no_grad()
def capture(model: nn.Module, first_block: nn.Module, samples: torch.Tensor) -> BlockCalls:
    """Block 0's inputs for each row of ``samples`` (token ids, shape (n, seqlen)), one sample per forward."""
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
        for sample in samples:
            try:
                model(input_ids=sample.unsqueeze(0))
            except _Stop:
                pass
    finally:
        handle.remove()
        if config is not None:
            config.use_cache = use_cache
    if len(calls) != len(samples):
        raise RuntimeError(f"block 0 was called {len(calls)} times for {len(samples)} samples; is it the first block?")
    return BlockCalls(calls, hidden)


def token_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of an activation ``x`` (batch, seq, features) that belong to real tokens, as a 2-D
    (tokens, features) tensor: what every statistic (Hessians, norms, means) must see, so padding
    never enters one. Every recorded call holds real tokens only today (one unpadded sample per call)."""
    return x.reshape(-1, x.shape[-1])


def _output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, calls: BlockCalls) -> None:
    """Replace each call's hidden states by the block's output: the next block's inputs."""
    for call in calls:
        call[calls.hidden] = _output(block(**call))
