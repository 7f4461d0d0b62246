"""Calibration without data: windows sampled from the model itself (LLM-QAT's data-free generation,
Liu et al., 2023), for users with no text at hand.

Each window starts from the model's BOS token (when it has one) and one token drawn uniformly from
the vocabulary, so windows differ from their first step, then continues by sampling from the model's
own next-token distribution (temperature, top-k), seeded. EOS is never sampled: a window is one
continuous text, as a window of a real corpus is. The whole model must be in memory to generate.
"""

from __future__ import annotations

import torch
from torch import nn

from .calib_text import check_counts


def _first_tokens(config, count: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    first = torch.randint(0, vocab, (count, 1), generator=generator)
    bos = getattr(config, "bos_token_id", None)
    if isinstance(bos, int) and 0 <= bos < vocab:
        return torch.cat([torch.full((count, 1), bos, dtype=torch.long), first], dim=1)
    return first


def _next_token(logits: torch.Tensor, temperature: float, top_k: int, banned: list[int], generator: torch.Generator) -> torch.Tensor:
    logits = logits.float() / temperature
    if banned:
        logits[:, banned] = float("-inf")
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@torch.no_grad()
def self_generated_samples(model: nn.Module, nsamples: int, seqlen: int, seed: int = 0, temperature: float = 1.0,
                           top_k: int = 50, batch_size: int = 16) -> torch.Tensor:
    """(nsamples, seqlen) token ids sampled from the causal LM ``model`` (whole, in memory), with the
    attention cache, ``batch_size`` windows at a time. Same seed, same windows."""
    check_counts(nsamples, seqlen)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0: the whole vocabulary), got {top_k!r}")
    can_generate = getattr(model, "can_generate", None)
    if can_generate is None or not can_generate():
        raise ValueError(f"calibration from the model's own text needs a causal language model that generates; "
                         f"{type(model).__name__} does not (use a text file instead)")
    vocab = model.get_output_embeddings().weight.shape[0]
    eos = getattr(model.config, "eos_token_id", None)
    banned = [t for t in ([eos] if isinstance(eos, int) else list(eos or [])) if 0 <= t < vocab]
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    windows = []
    try:
        for start in range(0, nsamples, batch_size):
            ids = _first_tokens(model.config, min(batch_size, nsamples - start), vocab, generator)[:, :seqlen]
            feed, cache = ids, None
            while ids.shape[1] < seqlen:  # the cache holds what was fed: each step feeds only the new token
                out = model(input_ids=feed, past_key_values=cache, use_cache=True)
                feed, cache = _next_token(out.logits[:, -1], temperature, top_k, banned, generator), out.past_key_values
                ids = torch.cat([ids, feed], dim=1)
            windows.append(ids)
    finally:
        model.train(was_training)
    return torch.cat(windows)
