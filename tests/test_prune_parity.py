"""Same masks as torch.nn.utils.prune: l1/random unstructured, ln_structured, global, ties, repeats."""

import copy

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from trimtune.core.state import wrap
from trimtune.prune import Columns, Magnitude, PruneConfig, Random, Rows, prune, pruned_structures


def _net(seed=0, ties=False):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Conv2d(3, 6, 3), nn.Linear(10, 4))
    if ties:  # few distinct magnitudes: topk must break the ties exactly as torch does
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randint(-2, 3, p.shape).float())
    return net


def _ours_vs_torch(net):
    return copy.deepcopy(net), copy.deepcopy(net)


def _mask(net, idx):
    return net[idx].weight_mask


@pytest.mark.parametrize("ties", [False, True])
def test_l1_unstructured_same_mask_and_repeats_compound(ties):
    ours, ref = _ours_vs_torch(_net(ties=ties))
    for amount in (0.3, 0.5, 7):  # fraction, fraction of what remains, then a count
        prune(ours, PruneConfig(amount=amount, targets=["0", "2", "3"], protect=[]))
        for i in (0, 2, 3):
            tprune.l1_unstructured(ref[i], "weight", amount)
        for i in (0, 2, 3):
            assert torch.equal(_mask(ours, i), _mask(ref, i)), (amount, i)
    x = torch.randn(2, 12)
    assert torch.allclose(ours[0](x), ref[0](x))


def test_random_unstructured_same_seed_same_mask_and_repeats():
    ours, ref = _ours_vs_torch(_net())
    importance = Random(seed=3)
    torch.manual_seed(3)
    for amount in (0.4, 0.5):
        prune(ours, PruneConfig(amount=amount, importance=importance, targets=["0"]))
        tprune.random_unstructured(ref[0], "weight", amount)
        assert torch.equal(_mask(ours, 0), _mask(ref, 0))
    other = copy.deepcopy(_net())
    prune(other, PruneConfig(amount=0.4, importance=Random(seed=4), targets=["0"]))
    first = copy.deepcopy(_net())
    prune(first, PruneConfig(amount=0.4, importance=Random(seed=3), targets=["0"]))
    assert not torch.equal(_mask(other, 0), _mask(first, 0))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [1, 2, float("inf")])
@pytest.mark.parametrize("dim", [0, 1])
def test_ln_structured_same_mask_and_records(n, dim, ties):
    ours, ref = _ours_vs_torch(_net(ties=ties))
    granularity = Rows() if dim == 0 else Columns()
    for amount in (0.3, 0.5):
        prune(ours, PruneConfig(amount=amount, importance=Magnitude(n), granularity=granularity, targets=["0", "2"]))
        for i in (0, 2):
            tprune.ln_structured(ref[i], "weight", amount, n=n, dim=dim)
    for i in (0, 2):
        assert torch.equal(_mask(ours, i), _mask(ref, i))
        other = [d for d in range(ref[i].weight_mask.dim()) if d != dim]
        zeroed = (ref[i].weight_mask.sum(dim=other) == 0).nonzero().flatten().tolist()
        assert pruned_structures(ours[i])["out" if dim == 0 else "in"] == zeroed


@pytest.mark.parametrize("ties", [False, True])
def test_global_unstructured_same_masks_and_repeats(ties):
    ours, ref = _ours_vs_torch(_net(ties=ties))
    for amount in (0.4, 0.5):
        prune(ours, PruneConfig(amount=amount, scope="global", targets=["0", "2", "3"], protect=[]))
        tprune.global_unstructured([(ref[i], "weight") for i in (0, 2, 3)], tprune.L1Unstructured, amount=amount)
    for i in (0, 2, 3):
        assert torch.equal(_mask(ours, i), _mask(ref, i))


def test_structured_after_unstructured_skips_dead_channels_like_torch():
    ours, ref = _ours_vs_torch(_net())
    with torch.no_grad():  # make row 2 fully prunable by the unstructured step
        ours[0].weight[2] = 1e-6
        ref[0].weight[2] = 1e-6
    prune(ours, PruneConfig(amount=12, targets=["0"]))
    tprune.l1_unstructured(ref[0], "weight", 12)
    prune(ours, PruneConfig(amount=0.5, granularity="out", targets=["0"]))
    tprune.ln_structured(ref[0], "weight", 0.5, n=1, dim=0)
    assert torch.equal(_mask(ours, 0), _mask(ref, 0))


def test_forward_is_weight_times_mask():
    net = _net()
    x = torch.randn(3, 12)
    prune(net, PruneConfig(amount=0.5, targets=["0"]))
    expected = nn.functional.linear(x, net[0].weight * net[0].weight_mask, net[0].bias)
    assert torch.allclose(net[0](x), expected)
    assert float((net[0].weight_mask == 0).float().mean()) == pytest.approx(0.5)


def test_gpt2_conv1d_structured_rows_are_output_units(tiny_gpt2):
    prune(tiny_gpt2, PruneConfig(amount=0.25, granularity="out", targets=["h.0.mlp.c_fc"]))
    layer = wrap(tiny_gpt2, "transformer.h.0.mlp.c_fc")
    dead = pruned_structures(layer)["out"]
    assert len(dead) == 32  # 25 % of 128 output units
    assert torch.all(layer.weight_mask[:, dead] == 0)  # Conv1D stores (in, out)
