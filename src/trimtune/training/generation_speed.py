"""Tokens per second of a causal LM where users feel them: the prompt's prefill and the greedy decode
that follows (batch 1). Medians over rounds, after a warm-up round.

The prefill is timed as ``generate`` runs it: the prompt fills the cache and only its last position
goes through the output head (transformers' ``logits_to_keep=1``, where the model takes it). Scoring
every prompt position would add a vocabulary-wide matrix product per prompt token that generation
never computes, and, for a small model with a large vocabulary, hide most of what pruning saved."""

from __future__ import annotations

import inspect
import statistics
import time

import torch
from torch import nn


@torch.no_grad()
def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def generation_speed(model: nn.Module, prompt: torch.Tensor, new_tokens: int = 128, rounds: int = 3) -> dict:
    """``prompt``: (1, length) token ids. Prefill: one forward over the prompt that fills the cache.
    Decode: ``generate`` of exactly ``new_tokens`` greedy tokens, less its own prefill."""
    model.eval()
    prompt = prompt.to(next(model.parameters()).device)
    if prompt.dim() != 2 or prompt.shape[0] != 1:
        raise ValueError(f"prompt must be (1, length) token ids, got shape {tuple(prompt.shape)}")

    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def prefill():
        model(input_ids=prompt, use_cache=True, **last_only)

    def generate():
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=getattr(model.config, "eos_token_id", None) or 0)

    prefill(), generate()  # warm-up: allocations, kernels
    prefills, generations = [], []
    for _ in range(rounds):
        prefills.append(_timed(prefill))
        generations.append(_timed(generate))
    t_prefill, t_generate = statistics.median(prefills), statistics.median(generations)
    return {"prefill_tokens_per_s": prompt.shape[1] / t_prefill,
            "decode_tokens_per_s": (new_tokens - 1) / max(t_generate - t_prefill, 1e-9),
            "prompt_tokens": prompt.shape[1], "new_tokens": new_tokens}
