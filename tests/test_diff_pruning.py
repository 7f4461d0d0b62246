"""Diff pruning: config checks, penalties by hand, exact projection, fixed-mask fine-tuning, masks, switching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trimtune as tt
from trimtune.core.state import layers
from trimtune.methods.diff.penalty import diff_deltas


def small_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def fill_diff(model, adapter, seed=0):
    """Give every dense diff entry a distinct random value (and gates wide open)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, delta in diff_deltas(model, adapter):
            for param in delta.diff.values():
                param.copy_(torch.randn(param.shape, generator=gen))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"density": 0}, "density"),
        ({"density": 1.5}, "density"),
        ({"density": True}, "density"),
        ({"density": "0.5"}, "density"),
        ({"penalty": "l2"}, "penalty"),
        ({"group": "column"}, "group"),
        ({"group": "row", "penalty": "l1"}, "group"),
        ({"beta": 0}, "beta"),
        ({"gamma": 0.1}, "gamma"),
        ({"zeta": 0.9}, "zeta"),
        ({"zeta": float("inf")}, "zeta"),
        ({"log_alpha_init": float("nan")}, "log_alpha_init"),
        ({"embeddings": True, "targets": "query"}, "embeddings"),
    ],
)
def test_bad_config_values_name_the_field(kwargs, field):
    with pytest.raises(tt.ConfigError, match=field):
        tt.DiffConfig(**kwargs)


def test_default_targets_are_linear_layers_but_the_head(tiny_bert):
    tt.apply(tiny_bert, tt.DiffConfig(), "task")
    names = [n for n, _ in layers(tiny_bert)]
    assert "classifier" not in names and len(names) == 2 * 6 + 1  # q k v o, intermediate, output + pooler
    assert all(isinstance(layer.base_layer, nn.Linear) for _, layer in layers(tiny_bert))


def test_embeddings_option_adds_embedding_layers(tiny_bert):
    tt.apply(tiny_bert, tt.DiffConfig(embeddings=True), "task")
    kinds = {type(layer.base_layer) for _, layer in layers(tiny_bert)}
    assert kinds == {nn.Linear, nn.Embedding}


def test_a_new_diff_leaves_outputs_unchanged_and_trains_diff_and_gates(tiny_bert, token_ids):
    before = tiny_bert(token_ids).logits
    tt.apply(tiny_bert, tt.DiffConfig(group="matrix"), "task")
    torch.testing.assert_close(tiny_bert(token_ids).logits, before, rtol=0, atol=0)
    tiny_bert.train()
    (tiny_bert(token_ids).logits.square().sum() + tt.diff_penalty(tiny_bert)).backward()
    delta = tiny_bert.bert.encoder.layer[0].attention.self.query.deltas["task"]
    assert delta.diff["weight"].grad.abs().sum() > 0
    assert delta.log_alpha["weight"].grad is not None and delta.group_log_alpha["weight"].grad is not None
    assert all(p.grad is None for n, p in tiny_bert.named_parameters() if ".deltas." not in n)


def test_l1_penalty_matches_hand_computation():
    model = small_mlp()
    tt.apply(model, tt.DiffConfig(penalty="l1", targets=nn.Linear), "task")
    fill_diff(model, "task")
    by_hand = sum(p.abs().sum().item() for _, d in diff_deltas(model, "task") for p in d.diff.values())
    assert math.isclose(tt.diff_penalty(model).item(), by_hand, rel_tol=1e-6)
    # one explicit number: a single entry set to -2, the rest zero
    with torch.no_grad():
        for _, d in diff_deltas(model, "task"):
            for p in d.diff.values():
                p.zero_()
        model[0].deltas["task"].diff["weight"][1, 2] = -2.0
    assert tt.diff_penalty(model).item() == 2.0


def test_expected_l0_penalty_matches_hand_computation():
    config = tt.DiffConfig(penalty="l0", group="row", beta=2 / 3, gamma=-0.1, zeta=1.1, targets=["0"])
    model = small_mlp()
    tt.apply(model, config, "task")
    delta = model[0].deltas["task"]
    entry = torch.linspace(-3, 3, 12).view(3, 4)
    rows = torch.tensor([[0.5], [-1.0], [2.0]])
    with torch.no_grad():
        delta.log_alpha["weight"].copy_(entry)
        delta.group_log_alpha["weight"].copy_(rows)
        delta.log_alpha["bias"].fill_(1.0)
        delta.group_log_alpha["bias"].fill_(-0.5)

    def p(a):  # P(z != 0) = sigmoid(log a - beta * log(-gamma / zeta))
        return 1 / (1 + math.exp(-(a - (2 / 3) * math.log(0.1 / 1.1))))

    by_hand = sum(p(entry[i, j].item()) * p(rows[i, 0].item()) for i in range(3) for j in range(4))
    by_hand += 3 * p(1.0) * p(-0.5)
    assert math.isclose(tt.diff_penalty(model).item(), by_hand, rel_tol=1e-5)
    assert delta.group_log_alpha["weight"].shape == (3, 1)  # one gate per output row


def test_hard_concrete_gates_by_hand():
    config = tt.DiffConfig(beta=2 / 3, gamma=-0.1, zeta=1.1, targets=["0"])
    model = small_mlp()
    tt.apply(model, config, "task")
    delta = model[0].deltas["task"]
    with torch.no_grad():
        delta.log_alpha["weight"].copy_(torch.tensor([0.0, -10.0, 10.0, 0.5]).repeat(3, 1))
    z = delta.gates("weight", sample=False)[0]
    expected = [min(1.0, max(0.0, 1 / (1 + math.exp(-a)) * 1.2 - 0.1)) for a in (0.0, -10.0, 10.0, 0.5)]
    torch.testing.assert_close(z, torch.tensor(expected))
    sampled = delta.gates("weight", sample=True)
    assert ((sampled >= 0) & (sampled <= 1)).all() and (sampled[:, 1] == 0).all() and (sampled[:, 2] == 1).all()


def test_row_groups_follow_the_output_dim_of_gpt2_conv1d(tiny_gpt2):
    tt.apply(tiny_gpt2, tt.DiffConfig(group="row"), "task")
    delta = tiny_gpt2.transformer.h[0].attn.c_attn.deltas["task"]
    assert delta.group_log_alpha["weight"].shape == (1, 96)  # Conv1D stores (in, out)


@pytest.mark.parametrize("density", [0.005, 0.05, 0.3, 1.0])
def test_projection_keeps_exactly_the_largest_entries(tiny_bert, density, token_ids):
    tt.apply(tiny_bert, tt.DiffConfig(density=density, penalty="l1"), "task")
    fill_diff(tiny_bert, "task")
    dense = torch.cat([d.dense(n).detach().reshape(-1) for _, d in diff_deltas(tiny_bert, "task") for n in d.shapes])
    report = tt.project_diffs(tiny_bert)
    total = dense.numel()
    assert report["total"] == total and report["kept"] == max(1, round(density * total))
    after = torch.cat([d.dense(n).detach().reshape(-1) for _, d in diff_deltas(tiny_bert, "task") for n in d.shapes])
    kept = after != 0
    assert kept.sum().item() == report["kept"]
    torch.testing.assert_close(after[kept], dense[kept], rtol=0, atol=0)  # kept values unchanged
    if kept.sum() < total:
        assert dense[kept].abs().min() >= dense[~kept].abs().max()


def test_projection_breaks_ties_by_position():
    model = small_mlp()
    tt.apply(model, tt.DiffConfig(penalty="none", targets=nn.Linear), "task")
    with torch.no_grad():
        for _, d in diff_deltas(model, "task"):
            for p in d.diff.values():
                p.fill_(0.5)
    tt.project_diffs(model, density=5 / 23)  # 12 + 3 + 6 + 2 entries, all equal
    first = model[0].deltas["task"]
    assert first.index("weight").tolist() == [0, 1, 2, 3, 4]
    assert first.index("bias").numel() == 0 and model[2].deltas["task"].kept() == 0


def test_projection_uses_gated_magnitudes():
    model = small_mlp()
    tt.apply(model, tt.DiffConfig(targets=["0"]), "task")
    delta = model[0].deltas["task"]
    with torch.no_grad():
        delta.diff["weight"].fill_(1.0)
        delta.diff["weight"][0, 0] = 5.0
        delta.log_alpha["weight"][0, 0] = -20.0  # gate closed: δ is 0 there however large w is
    tt.project_diffs(model, density=1 / 15)
    assert delta.index("weight").tolist() == [1]


def test_fixed_mask_fine_tuning_changes_only_kept_entries(tiny_bert, token_ids):
    tt.apply(tiny_bert, tt.DiffConfig(density=0.02, penalty="l1", modules_to_save=["classifier"]), "task")
    base = {k: v.clone() for k, v in tiny_bert.state_dict().items() if ".deltas." not in k and ".copies." not in k}
    tiny_bert.train()
    dense_opt = torch.optim.Adam([p for p in tiny_bert.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # sparsity phase: Adam builds momentum on every entry
        dense_opt.zero_grad()
        (tiny_bert(token_ids).logits[:, 0].sum() + 1e-4 * tt.diff_penalty(tiny_bert)).backward()
        dense_opt.step()
    tt.project_diffs(tiny_bert)
    deltas = diff_deltas(tiny_bert, "task")
    before = [d.dense(n).detach().clone() for _, d in deltas for n in d.shapes]
    trainable = [p for n, p in tiny_bert.named_parameters() if p.requires_grad and ".deltas." in n]
    assert sum(p.numel() for p in trainable) == sum(d.kept() for _, d in deltas)
    dense_opt.step()  # the stale optimizer's momentum reaches only the dropped dense tensors
    torch.testing.assert_close([d.dense(n) for _, d in deltas for n in d.shapes], before)
    opt = torch.optim.AdamW([p for p in tiny_bert.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        tiny_bert(token_ids).logits[:, 1].sum().backward()
        opt.step()
    after = [d.dense(n).detach() for _, d in deltas for n in d.shapes]
    changed = 0
    for old, new in zip(before, after):
        assert (new[old == 0] == 0).all()  # dropped entries stay exactly zero
        changed += (new != old).sum().item()
    assert changed > 0
    for key, value in tiny_bert.state_dict().items():
        if key in base:
            assert torch.equal(value, base[key]), key  # the base is untouched


def test_diff_on_a_masked_base_respects_the_mask():
    model = small_mlp()
    x = torch.randn(5, 4)
    layer_mask = (torch.arange(12).view(3, 4) % 3 != 0).float()
    tt.apply(model, tt.DiffConfig(penalty="none", targets=["0"]), "task")
    layer = model[0]
    layer.set_mask(layer_mask)
    fill_diff(model, "task")
    delta = layer.deltas["task"]
    expected = F.linear(x, (layer.weight + delta.diff["weight"]) * layer_mask, layer.bias + delta.diff["bias"])
    torch.testing.assert_close(layer(x), expected)
    assert (layer_mask == 0).any()
    out = model(x)
    weight = layer.weight.clone()
    tt.merge(model)
    torch.testing.assert_close(model(x), out)
    tt.unmerge(model)
    torch.testing.assert_close(layer.weight, weight)


def test_diffs_switch_merge_and_unload(tiny_bert, token_ids):
    base_out = tiny_bert(token_ids).logits
    base_state = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    for seed, name in enumerate(("a", "b")):
        tt.apply(tiny_bert, tt.DiffConfig(penalty="none", density=0.1), name)
        fill_diff(tiny_bert, name, seed)
        tt.project_diffs(tiny_bert, name)
    tt.set_adapter(tiny_bert, "a")
    out_a = tiny_bert(token_ids).logits
    tt.set_adapter(tiny_bert, "b")
    out_b = tiny_bert(token_ids).logits
    assert not torch.allclose(out_a, out_b) and not torch.allclose(out_a, base_out)
    with tt.disable_adapters(tiny_bert):
        torch.testing.assert_close(tiny_bert(token_ids).logits, base_out)
    tt.set_adapter(tiny_bert, "a")
    tt.merge(tiny_bert)
    torch.testing.assert_close(tiny_bert(token_ids).logits, out_a, rtol=1e-5, atol=1e-5)
    tt.unload(tiny_bert)
    for key, value in tiny_bert.state_dict().items():
        torch.testing.assert_close(value, base_state[key], rtol=0, atol=1e-6)


def test_projection_errors():
    model = small_mlp()
    with pytest.raises(ValueError, match="no active diff"):
        tt.diff_penalty(model)
    tt.apply(model, tt.DiffConfig(targets=nn.Linear), "task")
    with pytest.raises(ValueError, match="density"):
        tt.project_diffs(model, density=0)
    with pytest.raises(KeyError, match="no diff adapter named 'nope'"):
        tt.project_diffs(model, "nope")
    tt.project_diffs(model)
    with pytest.raises(ValueError, match="already projected"):
        tt.project_diffs(model)
