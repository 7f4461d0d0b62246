"""Regularisers and gates drive the right structures to zero on toys where the answer is known."""

import pytest
import torch
from torch import nn

import trimtune
from trimtune import ConfigError
from trimtune.prune import (
    GateConfig,
    gates_to_masks,
    group_lasso_penalty,
    l0_penalty,
    l1_penalty,
    prune_below,
    pruned_structures,
    runtime_skip,
)


def _teacher(out_features=8, in_features=10, dead_rows=(), dead_cols=()):
    torch.manual_seed(0)
    w = torch.randn(out_features, in_features)
    w[list(dead_rows)] = 0
    w[:, list(dead_cols)] = 0
    x = torch.randn(256, in_features)
    return x, x @ w.t()


def _fit(net, x, y, penalty, strength, steps=400, lr=0.03):
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.mse_loss(net(x), y) + strength * penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_l1_finds_the_sparse_weights():
    torch.manual_seed(0)
    w = torch.zeros(1, 20)
    w[0, [2, 7, 11]] = torch.tensor([1.5, -2.0, 1.0])
    x = torch.randn(256, 20)
    y = x @ w.t()
    net = nn.Sequential(nn.Linear(20, 1, bias=False))
    _fit(net, x, y, lambda: l1_penalty(net, targets=["0"]), 0.01, steps=600)
    prune_below(net, 0.05, targets=["0"])
    assert net[0].weight_mask.flatten().nonzero().flatten().tolist() == [2, 7, 11]


def test_group_lasso_on_rows_zeroes_the_dead_output_units():
    x, y = _teacher(dead_rows=(5, 6, 7))
    net = nn.Sequential(nn.Linear(10, 8))
    _fit(net, x, y, lambda: group_lasso_penalty(net, "out", targets=["0"]), 0.05)
    prune_below(net, 0.05, granularity="out", targets=["0"])
    assert pruned_structures(net[0])["out"] == [5, 6, 7]


def test_group_lasso_on_input_channels_zeroes_the_unused_inputs():
    x, y = _teacher(dead_cols=(0, 3))
    net = nn.Sequential(nn.Linear(10, 8))
    _fit(net, x, y, lambda: group_lasso_penalty(net, "in", targets=["0"]), 0.05)
    prune_below(net, 0.05, granularity="in", targets=["0"])
    assert pruned_structures(net[0])["in"] == [0, 3]


def test_group_lasso_on_heads_is_the_sum_of_head_norms(tiny_bert):
    penalty = group_lasso_penalty(tiny_bert, "heads")
    expected = 0
    for layer in tiny_bert.bert.encoder.layer:
        attn = layer.attention
        for h in range(4):
            rows = slice(8 * h, 8 * h + 8)
            parts = [attn.self.query.weight[rows], attn.self.key.weight[rows], attn.self.value.weight[rows], attn.output.dense.weight[:, rows]]
            expected = expected + torch.cat([p.flatten() for p in parts]).norm()
    assert torch.allclose(penalty, expected)
    penalty.backward()
    assert tiny_bert.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_l0_hard_concrete_gates_close_the_dead_units_and_fold_into_masks():
    x, y = _teacher(dead_rows=(1, 4))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 8))
    trimtune.apply(net, GateConfig(targets=["0"]), name="gates")
    net[0].weight.requires_grad_(True)
    net[0].bias.requires_grad_(True)
    _fit(net, x, y, lambda: l0_penalty(net), 0.02, steps=600, lr=0.05)
    net.eval()
    expected = net(x)
    gates_to_masks(net)
    assert pruned_structures(net[0])["out"] == [1, 4]
    assert "gates" not in net[0].deltas
    assert torch.allclose(net(x), expected, atol=1e-5)


def test_head_gates_group_units_and_runtime_skip_matches_and_skips():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12))
    trimtune.apply(net, GateConfig(targets=["0"], kind="sigmoid", group_size=4, threshold=0.5), name="gates")
    with torch.no_grad():
        net[0].deltas["gates"].log_alpha.copy_(torch.tensor([3.0, -3.0, 3.0]))  # head 1 closed
    net.eval()
    x = torch.randn(5, 6)
    full = net(x)
    assert torch.all(full[:, 4:8] == 0)
    seen = []
    forward = net[0].kind.forward
    net[0].kind.forward = lambda x, w, b: seen.append(tuple(w.shape)) or forward(x, w, b)
    runtime_skip(net)
    assert torch.allclose(net(x), full)
    assert seen == [(8, 6)]  # only the 8 open units were computed


def test_input_dependent_gates_vary_per_example_and_skip_consistently():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3))
    trimtune.apply(net, GateConfig(targets=["0"], kind="hard_concrete", input_dependent=True, hidden=4), name="gates")
    delta = net[0].deltas["gates"]
    with torch.no_grad():
        nn.init.normal_(delta.net[2].weight, std=5.0)
        delta.net[2].bias.zero_()
    net.eval()
    x = torch.randn(6, 3, 5, 5)
    full = net(x)
    z = delta.gate()
    assert z.shape == (6, 8) and not torch.all(z == z[0])  # per-example gates
    closed = (z == 0).unsqueeze(-1).unsqueeze(-1).expand_as(full)
    assert torch.all(full[closed] == 0)
    runtime_skip(net)
    assert torch.allclose(net(x), full, atol=1e-6)
    with pytest.raises(ValueError, match="per example"):
        gates_to_masks(net)


def test_gate_config_errors():
    with pytest.raises(ConfigError, match="kind"):
        GateConfig(kind="relu")
    with pytest.raises(ConfigError, match="init"):
        GateConfig(init=1.0)
    with pytest.raises(ConfigError, match="group_size=5"):
        trimtune.apply(nn.Sequential(nn.Linear(4, 8)), GateConfig(targets=["0"], group_size=5))
