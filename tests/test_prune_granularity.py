"""Granularities (N:M, blocks, heads), scopes, overrides, protection, importances and bad input."""

import pytest
import torch
from torch import nn

from trimtune import ConfigError, TargetError
from trimtune.core.state import wrap
from trimtune.prune import (
    NM,
    Blocks,
    Element,
    Movement,
    PruneConfig,
    Taylor,
    Wanda,
    collect_input_norms,
    collect_taylor,
    prune,
    pruned_structures,
    sparsity,
)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def test_nm_keeps_n_largest_of_every_m_along_inputs():
    net = _mlp()
    prune(net, PruneConfig(granularity="2:4", targets=["0", "2"]))
    for i in (0, 2):
        w, m = net[i].weight.detach(), net[i].weight_mask
        groups = m.view(m.shape[0], -1, 4)
        assert torch.all(groups.sum(-1) == 2)
        kept = (w.abs().view_as(groups) * groups).sum(-1)
        best = w.abs().view_as(groups).topk(2, dim=-1).values.sum(-1)
        assert torch.allclose(kept, best)


def test_nm_on_conv_groups_input_channels_and_bad_shapes():
    conv = nn.Sequential(nn.Conv2d(8, 4, 3))
    prune(conv, PruneConfig(granularity=NM(1, 4), targets=["0"]))
    assert torch.all(conv[0].weight_mask.sum(dim=1) == 2)  # 8 inputs -> 2 groups of 4, one kept each
    with pytest.raises(ConfigError, match="N < M"):
        NM(4, 4)
    with pytest.raises(ConfigError, match="not divisible by M=4"):
        prune(nn.Sequential(nn.Linear(6, 4)), PruneConfig(granularity="2:4", targets=["0"]))
    with pytest.raises(ConfigError, match="scope='layer'"):
        PruneConfig(granularity="2:4", scope="global")


def test_blocks_zero_whole_blocks():
    net = _mlp()
    prune(net, PruneConfig(amount=0.5, granularity=Blocks(4, 4), targets=["2"]))
    blocks = net[2].weight_mask.view(2, 4, 4, 4).transpose(1, 2).sum(dim=(2, 3))
    assert set(blocks.flatten().tolist()) == {0.0, 16.0}
    assert int((blocks == 0).sum()) == 4
    with pytest.raises(ConfigError, match="not divisible into 3x3"):
        prune(_mlp(), PruneConfig(granularity=Blocks(3, 3), targets=["2"]))


def test_heads_bert_zero_qkv_rows_and_output_columns(tiny_bert, token_ids):
    prune(tiny_bert, PruneConfig(amount=2, granularity="heads"))
    attention = "bert.encoder.layer.0.attention"
    query = wrap(tiny_bert, f"{attention}.self.query")
    dense = wrap(tiny_bert, f"{attention}.output.dense")
    heads = pruned_structures(query)["heads"]
    assert len(heads) == 2 and pruned_structures(dense)["heads"] == heads
    rows = [h * 8 + j for h in heads for j in range(8)]
    for name in ("query", "key", "value"):
        layer = wrap(tiny_bert, f"{attention}.self.{name}")
        assert torch.all(layer.weight_mask[rows] == 0) and pruned_structures(layer)["out"] == sorted(rows)
    assert torch.all(dense.weight_mask[:, rows] == 0)
    assert int((dense.weight_mask == 0).sum()) == 32 * 16
    tiny_bert(token_ids)  # still runs


def test_heads_llama_gqa_prunes_kv_head_only_when_its_group_is_gone(tiny_llama):
    attention = "model.layers.0.self_attn"
    # force query heads 0 and 1 (kv head 0's group) out: give them the smallest weights
    with torch.no_grad():
        for layer in tiny_llama.model.layers:
            layer.self_attn.q_proj.weight[:16] *= 1e-3
            layer.self_attn.o_proj.weight[:, :16] *= 1e-3
    prune(tiny_llama, PruneConfig(amount=2, granularity="heads"))
    k = wrap(tiny_llama, f"{attention}.k_proj")
    assert pruned_structures(wrap(tiny_llama, f"{attention}.q_proj"))["heads"] == [0, 1]
    assert pruned_structures(k)["heads"] == [0] and torch.all(k.weight_mask[:8] == 0) and torch.all(k.weight_mask[8:] == 1)


def test_heads_gpt2_fused_qkv(tiny_gpt2):
    prune(tiny_gpt2, PruneConfig(amount=1, granularity="heads", targets=["h.0.attn.c_attn"]))
    c_attn = wrap(tiny_gpt2, "transformer.h.0.attn.c_attn")
    head = pruned_structures(c_attn)["heads"][0]
    cols = [head * 8 + j + k * 32 for k in range(3) for j in range(8)]
    assert torch.all(c_attn.weight_mask[:, cols] == 0) and int((c_attn.weight_mask == 0).sum()) == 32 * 24
    c_proj = wrap(tiny_gpt2, "transformer.h.0.attn.c_proj")
    assert torch.all(c_proj.weight_mask[head * 8:(head + 1) * 8] == 0)


def test_global_scope_overrides_and_protect():
    net = _mlp()
    with torch.no_grad():
        net[0].weight *= 100  # one global threshold leaves the big-magnitude layer alone
    prune(net, PruneConfig(amount=0.4, scope="global", targets=["0", "2", "4"], protect=[], overrides={"4": 0.25}))
    assert net[0].weight_mask is None  # nothing of it fell under the threshold
    assert int((net[2].weight_mask == 0).sum()) == round(0.4 * 256)
    assert float((net[4].weight_mask == 0).float().mean()) == pytest.approx(0.25)
    with pytest.raises(TargetError, match="protected"):
        prune(_mlp(), PruneConfig(targets=["0", "4"], protect=["4"]))
    with pytest.raises(ConfigError, match="overrides"):
        PruneConfig(overrides={"0": 1.5})


def test_hf_head_protected_by_default(tiny_bert):
    prune(tiny_bert, PruneConfig(amount=0.3))
    assert isinstance(tiny_bert.classifier, nn.Linear)
    with pytest.raises(TargetError, match="protected"):
        prune(tiny_bert, PruneConfig(targets=["classifier"]))


@pytest.mark.parametrize("amount", [-0.1, 1.5, "half", True])
def test_bad_amounts(amount):
    with pytest.raises(ConfigError, match="amount"):
        PruneConfig(amount=amount)


def test_count_larger_than_layer_and_emptying_refused_unless_forced():
    with pytest.raises(ConfigError, match="larger than the 128"):
        prune(_mlp(), PruneConfig(amount=500, targets=["0"]))
    with pytest.raises(ValueError, match="every unit of 0"):
        prune(_mlp(), PruneConfig(amount=1.0, targets=["0"]))
    with pytest.raises(ValueError, match="every unit"):
        prune(_mlp(), PruneConfig(amount=1.0, granularity="out", targets=["0"]))
    net = _mlp()
    prune(net, PruneConfig(amount=1.0, targets=["0"], force=True))
    assert torch.all(net[0].weight_mask == 0)


def test_bad_granularity_and_importance():
    with pytest.raises(ConfigError, match="granularity"):
        PruneConfig(granularity="diagonal")
    with pytest.raises(ConfigError, match="importance"):
        PruneConfig(importance="magnitude")


def test_mask_shape_must_fit():
    layer = wrap(_mlp(), "0")
    with pytest.raises(ValueError, match="does not fit"):
        layer.set_mask(torch.ones(3, 3))


def test_wanda_scores_weight_times_input_norm_and_needs_calibration():
    net = _mlp()
    torch.manual_seed(0)
    batches = [torch.randn(5, 8) * torch.tensor([10.0] + [1.0] * 7) for _ in range(3)]
    norms = collect_input_norms(net, batches, targets=["0"])
    x = torch.cat(batches)
    assert torch.allclose(norms["0"], x.norm(dim=0), rtol=1e-5)
    prune(net, PruneConfig(amount=0.5, importance=Wanda(norms), targets=["0"]))
    scores = net[0].weight.detach().abs() * norms["0"]
    expected = torch.ones(128)
    expected[scores.flatten().topk(64, largest=False).indices] = 0
    assert torch.equal(net[0].weight_mask.flatten(), expected)
    assert float(net[0].weight_mask[:, 0].float().mean()) > float(net[0].weight_mask[:, 1:].float().mean())  # loud channel kept
    with pytest.raises(ConfigError, match="calibration"):
        Wanda()
    with pytest.raises(ValueError, match="no calibration data for layer '2'"):
        prune(net, PruneConfig(importance=Wanda(norms), targets=["2"]))


def test_taylor_accumulates_abs_weight_times_grad():
    net = _mlp()
    batches = [torch.randn(4, 8) for _ in range(2)]
    scores = collect_taylor(net, batches, lambda m, b: m(b).pow(2).sum(), targets=["2"])
    expected = 0
    for b in batches:
        net.zero_grad()
        net(b).pow(2).sum().backward()
        expected = expected + (net[2].weight * net[2].weight.grad).abs()
    assert torch.allclose(scores["2"], expected, atol=1e-6)
    prune(net, PruneConfig(amount=0.5, importance=Taylor(scores), targets=["2"]))
    assert sparsity(net) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="calibration"):
        Taylor({})


def test_movement_prunes_weights_moving_to_zero():
    net = _mlp()
    layer = wrap(net, "0")
    movement = Movement()
    with torch.no_grad():
        layer.weight.fill_(1.0)
    layer.weight.grad = torch.ones_like(layer.weight)
    layer.weight.grad[:, :4] = -1.0  # descent grows these
    movement.update(net)
    prune(net, PruneConfig(amount=0.5, importance=movement, targets=["0"]))
    assert torch.all(layer.weight_mask[:, :4] == 1) and torch.all(layer.weight_mask[:, 4:] == 0)


def test_element_per_output_prunes_the_same_fraction_of_every_row():
    net = _mlp()
    with torch.no_grad():
        net[0].weight[:4] *= 100  # layer-wise comparison would spare these rows entirely
    prune(net, PruneConfig(amount=0.5, granularity=Element(per_output=True), targets=["0"]))
    mask, w = net[0].weight_mask, net[0].weight.detach().abs()
    assert torch.all(mask.sum(1) == 4)
    kept_min = torch.where(mask == 1, w, torch.inf).min(1).values
    dropped_max = torch.where(mask == 0, w, -torch.inf).max(1).values
    assert torch.all(dropped_max <= kept_min)  # within each row, the smallest half went
    prune(net, PruneConfig(amount=0.5, granularity=Element(per_output=True), targets=["0"]))
    assert torch.all(net[0].weight_mask.sum(1) == 2)  # compounding on what remains, per row
    with pytest.raises(ConfigError, match="scope='layer'"):
        PruneConfig(granularity=Element(per_output=True), scope="global")
