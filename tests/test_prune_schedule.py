"""Schedules produce the stated sparsity at each step; the three timings share one API."""

import pytest
import torch
from torch import nn

from trimtune import ConfigError
from trimtune.prune import PruneConfig, Pruner, PruneSchedule, keep_pruned, sparsity


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 40), nn.ReLU(), nn.Linear(40, 10), nn.ReLU(), nn.Linear(10, 2))


def test_cubic_matches_zhu_gupta_formula():
    s = PruneSchedule(0.8, "cubic", begin=10, end=110)
    assert s.sparsity_at(0) == 0 and s.sparsity_at(10) == 0
    assert s.sparsity_at(60) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert s.sparsity_at(110) == s.sparsity_at(500) == 0.8
    coarse = PruneSchedule(0.8, "cubic", begin=0, end=100, every=25)
    assert coarse.sparsity_at(49) == coarse.sparsity_at(25) == pytest.approx(0.8 * (1 - 0.75 ** 3))


def test_iterative_rounds_prune_equal_fractions_of_what_remains():
    s = PruneSchedule(0.875, "iterative", begin=0, end=90, rounds=3)
    assert [s.sparsity_at(t) for t in (0, 29, 30, 60, 89, 90)] == pytest.approx([0.5, 0.5, 0.75, 0.875, 0.875, 0.875])


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("style", ["iterative", "cubic"])
def test_model_reaches_the_scheduled_sparsity_at_each_step(style, scope):
    net = _net()
    final = 0.9 if scope == "layer" else 0.6  # global at 0.9 would empty the small-weight layer
    schedule = PruneSchedule(final, style, begin=5, end=45, rounds=4, every=5)
    pruner = Pruner(net, PruneConfig(scope=scope, targets=["0", "2"]), schedule)
    for step in range(60):
        pruner.step(step)
        assert sparsity(net) == pytest.approx(schedule.sparsity_at(step), abs=0.003), step
        if scope == "layer" and schedule.sparsity_at(step) > 0:
            for i in (0, 2):
                assert float((net[i].weight_mask == 0).float().mean()) == pytest.approx(schedule.sparsity_at(step), abs=0.003)


def test_structured_schedule_counts_channels():
    net = _net()
    pruner = Pruner(net, PruneConfig(granularity="out", targets=["0"]), PruneSchedule(0.5, "iterative", 0, 20, rounds=2))
    pruner.step(0)
    assert len(net[0].pruned_structures["out"]) == round(40 * (1 - 0.5 ** 0.5))
    pruner.step(10)
    assert len(net[0].pruned_structures["out"]) == 20


@pytest.mark.parametrize("timing,style", [("before", "one-shot"), ("during", "cubic"), ("after", "one-shot"), ("after", "iterative")])
def test_timings_in_a_training_loop(timing, style):
    net = _net()
    total = 60
    schedule = PruneSchedule.for_timing(timing, 0.7, total, style=style)
    pruner = Pruner(net, PruneConfig(targets=["0", "2"]), schedule)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    keep_pruned(optimizer, net)
    torch.manual_seed(1)
    x = torch.randn(128, 10)
    y = (x[:, 0] > 0).long()
    history = []
    for step in range(total):
        pruner.step(step)
        history.append(sparsity(net))
        loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    first_pruned = next(i for i, s in enumerate(history) if s > 0)
    begin = {"before": 0, "during": 0, "after": int(total * 0.3)}[timing]
    assert first_pruned == begin + (style == "cubic")  # the cubic ramp starts from 0 at its first step
    assert history[-1] == pytest.approx(0.7, abs=0.003)
    assert history == sorted(history)
    assert float((net(x).argmax(1) == y).float().mean()) > 0.9  # fine-tuning after pruning still learns
    for i in (0, 2):
        assert torch.all(net[i].weight[net[i].weight_mask == 0] == 0)


def test_bad_schedules():
    with pytest.raises(ConfigError, match="final"):
        PruneSchedule(1.2)
    with pytest.raises(ConfigError, match="style"):
        PruneSchedule(0.5, "exponential")
    with pytest.raises(ConfigError, match="begin <= end"):
        PruneSchedule(0.5, "cubic", begin=10, end=5)
    with pytest.raises(ConfigError, match="timing"):
        PruneSchedule.for_timing("later", 0.5, 10)
    with pytest.raises(ConfigError, match="one-shot"):
        PruneSchedule.for_timing("before", 0.5, 10, style="cubic")
