"""Evaluation: mean loss and metrics over a data set, and the accuracy metric.

A metric is a function ``(logits, labels) -> per-example scores`` (a tensor with one value per
example, e.g. 1.0 for a correct prediction); ``evaluate`` averages the scores over all examples,
so batches of unequal size are weighted correctly.

A causal LM's loss is the mean over the tokens that have a target (completion tokens only, for
instruction data that masks its prompts), so across batches it is weighted by those tokens, not by
examples, and ``evaluate`` reports its exponential, the perplexity of those tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .batches import IGNORE_INDEX, LossFn, lm_target_tokens, run_batch, to_device

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where the arg-max class equals the label, else 0.0: one value per labelled example (or
    token); labels of -100, Hugging Face's "ignore" index (padding), are left out."""
    keep = labels != IGNORE_INDEX
    return (logits.argmax(dim=-1) == labels)[keep].float()


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Iterable,
    metric: Metric | Mapping[str, Metric] | None = None,
    *,
    loss_fn: LossFn | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """{"loss": mean loss (when the batches give one), <metric name>: mean score, ...}; for a causal LM
    also "perplexity" and "target_tokens" (the loss is then the mean over all target tokens).

    The model runs in eval mode (its previous mode is restored after); batches are moved to
    ``device`` (default: where the model's parameters are)."""
    metrics = _named(metric)
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(["loss", *metrics], 0.0)
    counts = dict.fromkeys(sums, 0)
    target_tokens = 0
    try:
        for batch in data:
            batch = to_device(batch, device)
            out = run_batch(model, batch, loss_fn)
            if out.loss is not None:
                tokens = lm_target_tokens(model, batch) if loss_fn is None else None
                weight = out.size if tokens is None else tokens
                sums["loss"] += float(out.loss) * weight
                counts["loss"] += weight
                target_tokens += tokens or 0
            for name, fn in metrics.items():
                if out.labels is None:
                    raise ValueError(f"metric {name!r} needs labels; the batch has none")
                scores = fn(out.logits, out.labels)
                sums[name] += float(scores.sum())
                counts[name] += scores.numel()
    finally:
        model.train(was_training)
    if not any(counts.values()):
        raise ValueError("evaluation data yielded no batches (or no loss and no metric to compute)")
    results = {name: sums[name] / counts[name] for name in sums if counts[name]}
    if target_tokens:
        results.update(perplexity=math.exp(results["loss"]), target_tokens=target_tokens)
    return results


def _named(metric) -> dict[str, Metric]:
    if metric is None:
        return {}
    if isinstance(metric, Mapping):
        return dict(metric)
    if callable(metric):
        return {getattr(metric, "__name__", "metric"): metric}
    raise TypeError(f"metric must be a function (logits, labels) -> per-example scores, or a dict of them; got {type(metric).__name__}")
