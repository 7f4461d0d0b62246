"""Calibration samples as users have them, turned into the batches the capture forwards run.

Accepted (``prune_sequential`` / ``prune_directory``'s ``samples``):

- a LongTensor of token ids, shape (nsamples, seqlen): each row one sample;
- a list of 1-D LongTensors of any lengths: each one sample, as llm-compressor takes them;
- padded batches: a dict (or a list of dicts) with ``input_ids`` (batch, length) and
  ``attention_mask`` (1 = real token), padded on the left or on the right.

Every form becomes one list of 1-D samples (real tokens only: a batch's padding is dropped here),
then new batches of up to ``batch_tokens`` padded tokens, longest samples first so that samples of
similar length share a batch. Batches are padded on the right: real tokens then sit at positions
0..len-1 as in an unpadded forward, so no architecture needs position ids (left padding would).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FORMS = "a LongTensor (nsamples, seqlen), a list of 1-D LongTensors or padded batches (dicts with input_ids and attention_mask)"


@dataclass
class Batch:
    """One capture forward: ``input_ids`` (b, L) padded on the right; ``real`` (b, L) bool marks the
    real tokens, or is None when the batch has no padding."""

    input_ids: torch.Tensor
    real: torch.Tensor | None

    @property
    def attention_mask(self) -> torch.Tensor | None:
        return None if self.real is None else self.real.long()


def _check_ids(ids, where: str) -> None:
    if not torch.is_tensor(ids) or ids.dtype != torch.long:
        raise ValueError(f"{where} must be a LongTensor of token ids, got {type(ids).__name__}"
                         f"{f' of dtype {ids.dtype}' if torch.is_tensor(ids) else ''}")


def _batch_rows(batch: dict, where: str) -> list[torch.Tensor]:
    """The real tokens of each row of a padded batch; each row's real tokens must be contiguous."""
    if "input_ids" not in batch:
        raise ValueError(f"{where} has no 'input_ids' (keys: {sorted(batch)}); a padded batch needs input_ids and attention_mask")
    ids = batch["input_ids"]
    _check_ids(ids, f"{where}['input_ids']")
    if ids.dim() != 2:
        raise ValueError(f"{where}['input_ids'] must be 2-D (batch, length), got shape {tuple(ids.shape)}")
    mask = batch.get("attention_mask")
    if mask is None:
        return list(ids)
    if not torch.is_tensor(mask) or mask.shape != ids.shape:
        raise ValueError(f"{where}['attention_mask'] must be a tensor of input_ids' shape {tuple(ids.shape)}, got "
                         f"{tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__}")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{where}['attention_mask'] must hold only 0 (padding) and 1 (real token)")
    rows = []
    for r, (row, keep) in enumerate(zip(ids, mask.bool())):
        where_row = f"{where} row {r}"
        positions = keep.nonzero().flatten()
        if not len(positions):
            raise ValueError(f"{where_row} has no real tokens (attention_mask all 0); drop it")
        if positions[-1] - positions[0] + 1 != len(positions):
            raise ValueError(f"{where_row}: its real tokens are not contiguous; only left or right padding is allowed")
        rows.append(row[keep])
    return rows


def as_samples(samples) -> list[torch.Tensor]:
    """The calibration samples as 1-D LongTensors of real tokens, in the order given."""
    if torch.is_tensor(samples):
        _check_ids(samples, "calibration samples")
        if samples.dim() != 2:
            raise ValueError(f"a tensor of calibration samples must be 2-D (nsamples, seqlen), got shape {tuple(samples.shape)}; "
                             f"pass a list for samples of different lengths")
        if samples.shape[0] == 0:
            raise ValueError("nsamples must be >= 1: got no calibration samples")
        out = list(samples)
    elif isinstance(samples, dict):
        out = _batch_rows(samples, "calibration batch")
    elif isinstance(samples, (list, tuple)):
        if not samples:
            raise ValueError(f"got an empty list of calibration samples; pass at least one: {FORMS}")
        out = []
        for i, item in enumerate(samples):
            if isinstance(item, dict):
                out += _batch_rows(item, f"calibration batch {i}")
            elif torch.is_tensor(item) and item.dim() == 1:
                _check_ids(item, f"calibration sample {i}")
                out.append(item)
            else:
                raise ValueError(f"calibration item {i} is {type(item).__name__}"
                                 f"{f' of shape {tuple(item.shape)}' if torch.is_tensor(item) else ''}; a list holds 1-D "
                                 f"LongTensors (one sample each) or dicts with input_ids and attention_mask")
    else:
        raise ValueError(f"calibration samples must be {FORMS}; got {type(samples).__name__}")
    for i, sample in enumerate(out):
        if not len(sample):
            raise ValueError(f"calibration sample {i} is empty; every sample needs at least one token")
    return out


def batches(samples: list[torch.Tensor], batch_tokens: int) -> list[Batch]:
    """Samples grouped, longest first, into right-padded batches of at most ``batch_tokens`` tokens
    (padding included; a longer sample gets a batch of its own)."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]))  # stable: equal lengths keep their order
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * len(samples[groups[-1][0]]) <= batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [_pad([samples[i] for i in group]) for group in groups]


def _pad(rows: list[torch.Tensor]) -> Batch:
    length = len(rows[0])
    if all(len(r) == length for r in rows):
        return Batch(torch.stack(rows), None)
    ids = torch.zeros(len(rows), length, dtype=torch.long)  # id 0 exists in every vocabulary; the mask hides it
    real = torch.zeros(len(rows), length, dtype=torch.bool)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = row
        real[r, :len(row)] = True
    return Batch(ids, real)
