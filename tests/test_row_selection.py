"""Chunked per-row selection (Wanda's comparison groups) chooses exactly what one whole-layer stable sort chose."""

import pytest
import torch
from torch import nn

from trimtune.prune import Element, PruneConfig, Wanda, collect_input_norms, prune
from trimtune.prune.granularity import Units
from trimtune.prune.row_selection import lowest_per_row


def _whole_layer_reference(scores, alive, rows, k):
    """The earlier implementation: rank every entry of the layer at once with one stable argsort."""
    s = scores.float().view(rows, -1).masked_fill(~alive.view(rows, -1), -float("inf"))
    alive_per_row = alive.view(rows, -1).sum(1)
    quota = (s.shape[1] - alive_per_row) + torch.round(alive_per_row * (k / max(int(alive_per_row.sum()), 1))).long()
    rank = torch.empty_like(s, dtype=torch.long)
    rank.scatter_(1, s.argsort(dim=1, stable=True), torch.arange(s.shape[1]).expand_as(s).contiguous())
    return ((rank < quota.unsqueeze(1)).flatten() & alive).nonzero().flatten()


@pytest.mark.parametrize("seed", range(6))
def test_per_row_selection_equals_the_whole_layer_sort_with_ties_and_dead_units(seed):
    g = torch.Generator().manual_seed(seed)
    rows, cols = 37, 53
    scores = torch.randint(0, 6, (rows * cols,), generator=g).float()  # few distinct values: many ties
    alive = torch.rand(rows * cols, generator=g) > 0.3
    alive.view(rows, cols)[3] = False  # a row with no survivors
    alive.view(rows, cols)[5] = True
    units = Units("layer", scores, alive, lambda idx: None, rows=rows)
    for k in (0, 1, int(alive.sum()) // 2, int(alive.sum()) - 1, int(alive.sum())):
        expected = _whole_layer_reference(scores, alive, rows, k)
        assert torch.equal(units.select(k), expected)
        for chunk in (1, cols, 7 * cols + 3):  # one row, exactly one row, several rows per chunk
            quota = (cols - alive.view(rows, -1).sum(1)) + torch.round(alive.view(rows, -1).sum(1) * (k / int(alive.sum()))).long()
            got = lowest_per_row(scores.view(rows, -1), alive.view(rows, -1), quota, chunk_entries=chunk)
            assert torch.equal(got.view(-1).nonzero().flatten(), expected)


def test_ties_go_to_the_earlier_column_and_dead_units_are_never_returned():
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.5], [2.0, 0.0, 2.0, 2.0]])
    alive = torch.tensor([[True, True, True, True], [True, False, True, True]])
    quota = torch.tensor([2, 2])  # row 1: its dead entry counts as one of the two
    got = lowest_per_row(scores, alive, quota)
    assert got.tolist() == [[True, False, False, True], [True, False, False, False]]


def test_wanda_masks_equal_the_whole_layer_sort_on_a_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(24, 40))
    with torch.no_grad():
        net[0].weight.copy_(torch.randint(-3, 4, (40, 24)).float())  # integer weights: tied scores
    batches = [torch.randn(8, 24) for _ in range(2)]
    wanda = Wanda(collect_input_norms(net, batches))
    scores = wanda("0", net[0]).flatten()
    expected = torch.ones(40 * 24, dtype=torch.bool)
    expected[_whole_layer_reference(scores, torch.ones_like(expected), 40, round(0.5 * 40 * 24))] = False
    prune(net, PruneConfig(amount=0.5, importance=wanda, granularity=Element(per_output=True), targets=["0"]))
    assert torch.equal(net[0].weight_mask.flatten(), expected)
