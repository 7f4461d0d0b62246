"""Perplexity of a causal language model on a token stream, with sliding windows.

Windows of ``seqlen`` tokens start every ``stride`` tokens; each token is scored once, in the first
window that reaches it, with up to ``seqlen - 1`` tokens of context (``stride == seqlen``: disjoint
windows, the cheapest; a smaller stride gives later tokens more context, as in the Hugging Face guide).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.io.text_tokens import tokenize_file


def _limit(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, seqlen: int, stride: int | None = None) -> dict:
    """``{"perplexity", "nll", "tokens", "windows"}`` over the 1-D token ids ``ids``."""
    stride = seqlen if stride is None else stride  # a stride of 0 is refused below, not replaced
    if seqlen < 2 or not 1 <= stride <= seqlen:
        raise ValueError(f"need seqlen >= 2 and 1 <= stride <= seqlen, got seqlen={seqlen}, stride={stride}")
    limit = _limit(model)
    if limit is not None and seqlen > limit:
        raise ValueError(f"seqlen {seqlen} is longer than the model's {limit} positions (config max_position_embeddings)")
    if ids.dim() != 1 or len(ids) < 2:
        raise ValueError(f"perplexity needs at least 2 tokens of text, got {ids.numel()}")
    was_training = model.training
    model.eval()
    total, count, windows, scored_to = 0.0, 0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + seqlen, len(ids))
        window = ids[begin:end].unsqueeze(0)
        new = end - max(scored_to, begin + 1)  # tokens no earlier window scored (the first has no context)
        if new > 0:
            logits = model(input_ids=window).logits[0, :-1].float()
            total += float(F.cross_entropy(logits[-new:], window[0, 1:][-new:], reduction="sum"))
            count += new
            windows += 1
        scored_to = end
        if end == len(ids):
            break
    model.train(was_training)
    nll = total / count
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": count, "windows": windows}


def perplexity_of_file(model: nn.Module, tokenizer, path, seqlen: int, stride: int | None = None) -> dict:
    return perplexity(model, tokenize_file(path, tokenizer), seqlen, stride)
