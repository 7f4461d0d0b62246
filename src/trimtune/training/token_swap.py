"""Perturbed copies of a token batch: the transfer set a distillation teacher labels (TinyBERT-style
augmentation, Jiao et al. 2020).

TinyBERT replaces words by a masked language model's or GloVe's nearest candidates; that needs a
second model and a vocabulary. Here a share of each example's tokens is replaced by tokens drawn from
the same batch (its own unigram distribution), so replacements stay in the task's vocabulary and no
tokenizer is needed. The first and last attended token of each row (``[CLS]``/``[SEP]``, BOS/EOS)
and padding are never replaced. The draw uses torch's global generator, which checkpoints save, so a
resumed run perturbs exactly as the uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def perturbed_copy(batch, share: float):
    """A copy of a training batch, in the same form (a mapping, or an ``(inputs, targets)`` pair), in
    which each replaceable token is replaced with probability ``share`` by a token drawn uniformly from
    the batch's replaceable tokens. Labels are left out: a perturbed example's label is the teacher's
    to give. Raises ValueError when the batch carries no token ids."""
    inputs = token_inputs(batch)
    if isinstance(inputs, Mapping):
        fields = {k: v for k, v in inputs.items() if k != "labels"}
        return {**fields, "input_ids": swap_tokens(inputs["input_ids"], inputs.get("attention_mask"), share)}
    return swap_tokens(inputs, None, share), None


def token_inputs(batch):
    """The batch's inputs (a mapping with a 2-D integer ``input_ids``, or a tensor of ids); raises
    ValueError naming what is needed otherwise. Draws nothing: a check before training changes no
    random stream."""
    inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
    ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else inputs
    if not (isinstance(ids, torch.Tensor) and ids.ndim == 2 and not ids.is_floating_point() and not ids.is_complex()):
        raise ValueError("distillation with augment > 0 needs token-id inputs (a batch with a 2-D integer 'input_ids', "
                         "or an (ids, targets) pair of integer ids) to make perturbed copies from; set augment: 0 for other inputs")
    return inputs


def swap_tokens(ids: torch.Tensor, attention_mask: torch.Tensor | None, share: float) -> torch.Tensor:
    """``ids`` with each replaceable token replaced with probability ``share`` by one drawn from the
    replaceable tokens of the batch."""
    replaceable = _inner_positions(ids, attention_mask)
    pool = ids[replaceable]
    if pool.numel() == 0:
        return ids.clone()
    chosen = replaceable & (torch.rand(ids.shape, device=ids.device) < share)
    swapped = ids.clone()
    swapped[chosen] = pool[torch.randint(pool.numel(), (int(chosen.sum()),), device=ids.device)]
    return swapped


def _inner_positions(ids: torch.Tensor, attention_mask) -> torch.Tensor:
    """Attended positions other than each row's first and last attended one (left or right padding)."""
    attended = attention_mask.bool() if isinstance(attention_mask, torch.Tensor) and attention_mask.shape == ids.shape \
        else torch.ones_like(ids, dtype=torch.bool)
    length = ids.shape[1]
    first = attended.int().argmax(1)
    last = length - 1 - attended.flip(1).int().argmax(1)
    rows = torch.arange(ids.shape[0], device=ids.device)
    inner = attended.clone()
    inner[rows, first] = False
    inner[rows, last] = False
    return inner
