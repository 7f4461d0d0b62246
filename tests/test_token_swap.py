"""Perturbed copies for distillation's transfer set (training/token_swap.py): only inner attended
tokens change, replacements come from the batch, padding sides are both handled, the batch keeps its
form."""

import pytest
import torch

from trimtune.training.token_swap import perturbed_copy, swap_tokens


def test_swaps_only_inner_tokens_with_tokens_of_the_batch():
    torch.manual_seed(0)
    rows = 512
    ids = torch.randint(10, 1000, (rows, 12))
    ids[:, 0], mask = 101, torch.ones(rows, 12, dtype=torch.long)
    for row in range(rows):  # right padding of varying length; the last attended token is a [SEP]
        length = 4 + row % 8
        ids[row, length - 1], ids[row, length:], mask[row, length:] = 102, 0, 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(rows, dtype=torch.long)}
    copy = perturbed_copy(batch, 0.5)
    assert "labels" not in copy and copy["attention_mask"] is mask  # the teacher labels the copies
    swapped, changed, lengths = copy["input_ids"], copy["input_ids"] != ids, mask.sum(1)
    assert not changed[:, 0].any() and not changed[torch.arange(rows), lengths - 1].any()  # [CLS] and [SEP] kept
    assert torch.equal(swapped[mask == 0], ids[mask == 0])  # padding kept
    inner = mask.bool().clone()
    inner[:, 0], inner[torch.arange(rows), lengths - 1] = False, False
    assert set(swapped[inner].tolist()) <= set(ids[inner].tolist())  # drawn from the batch's own inner tokens
    share = changed[inner].float().mean().item()
    assert 0.46 < share < 0.54  # half are redrawn (2816 inner tokens: 4 standard deviations either side)
    assert torch.equal(batch["input_ids"], ids)  # the batch itself is untouched


def test_left_padding_keeps_each_rows_first_and_last_attended_token():
    ids = torch.tensor([[0, 0, 1, 5, 6, 7, 2], [1, 8, 9, 10, 11, 12, 2]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    torch.manual_seed(1)
    swapped = swap_tokens(ids, mask, 0.99)
    assert swapped[0, :3].tolist() == [0, 0, 1] and swapped[:, -1].tolist() == [2, 2] and swapped[1, 0] == 1
    assert (swapped[:, 3:6] != ids[:, 3:6]).any()


def test_batch_forms_and_inputs_without_token_ids():
    ids = torch.randint(0, 50, (3, 5))
    assert torch.equal(swap_tokens(ids, None, 0.0), ids)
    copy, targets = perturbed_copy((ids, torch.zeros(3)), 0.5)  # (ids, targets): the model takes the ids
    assert copy.shape == ids.shape and targets is None
    assert set(perturbed_copy(({"input_ids": ids}, torch.zeros(3)), 0.5)) == {"input_ids"}
    for features in [(torch.randn(3, 4), torch.zeros(3)), {"pixel_values": torch.randn(2, 3, 8, 8)}]:
        with pytest.raises(ValueError, match="augment > 0 needs token-id inputs"):
            perturbed_copy(features, 0.5)
