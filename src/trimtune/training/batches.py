"""The two batch shapes the loop and ``evaluate`` accept, run through a model.

- a mapping (HF style, e.g. a tokenizer's ``BatchEncoding`` with ``labels``): ``model(**batch)``;
  the loss is the model's ``.loss`` unless a ``loss_fn(logits, labels)`` is given, in which case
  ``labels`` is taken out of the batch first;
- an ``(inputs, targets)`` pair: ``model(inputs)`` (``model(**inputs)`` for a mapping), loss
  ``loss_fn(logits, targets)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
IGNORE_INDEX = -100  # Hugging Face's "no target here" label


@dataclass
class BatchOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor
    labels: torch.Tensor | None
    size: int  # examples in the batch, to weight averages over batches of unequal size


def to_device(batch, device: torch.device):
    """The batch with every tensor in it (nested in mappings, tuples, lists) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def run_batch(model: nn.Module, batch, loss_fn: LossFn | None = None) -> BatchOutput:
    if isinstance(batch, Mapping):
        inputs, labels = dict(batch), batch.get("labels")
        if loss_fn is not None:
            if labels is None:
                raise ValueError(f"a loss_fn needs labels: the batch has keys {sorted(batch)} but no 'labels'")
            del inputs["labels"]
        outputs = model(**inputs)
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, labels = batch
        outputs = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    else:
        shape = f"{type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
        raise TypeError(f"a batch must be a dict (HF style; the model returns .loss) or an (inputs, targets) pair, got a {shape}")
    logits = _logits(outputs)
    if loss_fn is not None:
        loss = loss_fn(logits, labels)
    else:
        loss = getattr(outputs, "loss", None)
    return BatchOutput(loss, logits, labels, _size(labels, logits))


def _logits(outputs) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is not None:
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(f"cannot find logits in the model's output ({type(outputs).__name__}): expected a tensor, .logits or a tuple")


def _size(labels, logits: torch.Tensor) -> int:
    reference = labels if isinstance(labels, torch.Tensor) and labels.ndim > 0 else logits
    return int(reference.shape[0]) if reference.ndim > 0 else 1


def lm_target_tokens(model: nn.Module, batch) -> int | None:
    """How many tokens a causal LM's loss averages over in ``batch`` (None for other models and batch
    shapes): its labels after the one-position shift the model applies, or ``shift_labels`` when the
    batch gives them already aligned (``data/loss_positions.py``)."""
    can_generate = getattr(model, "can_generate", None)
    if not (isinstance(batch, Mapping) and callable(can_generate) and can_generate()):
        return None
    if batch.get("shift_labels") is not None:
        return int((batch["shift_labels"] != IGNORE_INDEX).sum())
    labels = batch.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.ndim < 2:
        return None
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
