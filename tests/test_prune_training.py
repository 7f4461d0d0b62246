"""Masked fine-tuning keeps pruned entries at exactly 0 (optimizer state included); permanence,
deepcopy and the sparsity-preserving (or dense) LoRA merge."""

import copy
import warnings

import pytest
import torch
from torch import nn

import trimtune
from trimtune.core.state import wrap
from trimtune.prune import PruneConfig, keep_pruned, make_permanent, prune, remove_masks, sparsity


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Conv1d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(32, 3))


def _forward(net, x):
    h = net[1](net[0](x)).view(-1, 4, 8)
    return net[4](net[3](net[2](h)))


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_pruned_entries_stay_zero_through_training(opt):
    net = _net()
    prune(net, PruneConfig(amount=0.7, targets=["0", "2", "4"], protect=[]))
    masks = {i: net[i].weight_mask.clone() for i in (0, 2, 4)}
    optimizer = OPTIMIZERS[opt](net.parameters())
    keep_pruned(optimizer, net)
    torch.manual_seed(1)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    first = None
    for _ in range(200):
        loss = nn.functional.cross_entropy(_forward(net, x), y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first  # it trained
    for i, mask in masks.items():
        weight = net[i].weight
        assert torch.equal(net[i].weight_mask, mask)
        assert torch.all(weight[mask == 0] == 0)  # the raw weight, not only the masked forward
        assert torch.any(weight[mask == 1] != 0)
        for value in optimizer.state[weight].values():
            if value.shape == weight.shape:
                assert torch.all(value[mask == 0] == 0)  # no stale momentum / moments to revive them


def test_without_hook_weight_decay_moves_raw_weights_but_forward_stays_masked():
    net = _net()
    prune(net, PruneConfig(amount=0.5, targets=["0"]))
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.5)
    before = net[0].weight.detach().clone()
    _forward(net, torch.randn(4, 8)).sum().backward()
    optimizer.step()
    dead = net[0].weight_mask == 0
    assert not torch.equal(net[0].weight[dead], before[dead])  # why keep_pruned exists
    x = torch.randn(2, 8)
    assert torch.allclose(net[0](x), nn.functional.linear(x, net[0].weight * net[0].weight_mask, net[0].bias))


def test_make_permanent_and_remove():
    net = _net()
    prune(net, PruneConfig(amount=0.5, targets=["0"]))
    x = torch.randn(3, 8)
    pruned_out = net[0](x)
    original = net[0].weight.detach().clone()
    dense = remove_masks(copy.deepcopy(net))
    assert dense[0].weight_mask is None and torch.equal(dense[0].weight, original)
    make_permanent(net)
    assert net[0].weight_mask is None
    assert torch.allclose(net[0](x), pruned_out)
    assert float((net[0].weight == 0).float().mean()) == pytest.approx(0.5)


def test_deepcopy_of_masked_model_is_independent():
    net = _net()
    prune(net, PruneConfig(amount=0.5, granularity="out", targets=["0"]))
    twin = copy.deepcopy(net)
    x = torch.randn(2, 8)
    assert torch.equal(twin[0](x), net[0](x))
    assert twin[0].pruned_structures == net[0].pruned_structures
    prune(twin, PruneConfig(amount=0.5, targets=["0"]))
    assert sparsity(twin) > sparsity(net)


def test_lora_merge_keeps_sparsity_by_default(tiny_bert, token_ids):
    prune(tiny_bert, PruneConfig(amount=0.5, targets=["query", "value"]))
    trimtune.apply(tiny_bert, trimtune.LoraConfig(r=4))
    for _, layer in trimtune.core.state.layers(tiny_bert):
        nn.init.normal_(layer.deltas["default"].lora_B)
    before = sparsity(tiny_bert)
    expected = tiny_bert(token_ids).logits
    with pytest.warns(UserWarning, match=r"drops the part of a low-rank adapter's change on pruned entries \(up to 7\d% .*keep_sparsity=False"):
        trimtune.merge(tiny_bert)  # B ~ N(0, 1): about sqrt(1/2) of BA's norm sits on the pruned half
    after = sum(int((layer.weight * layer.weight_mask == 0).sum()) for _, layer in trimtune.core.state.layers(tiny_bert))
    assert after / sum(layer.weight.numel() for _, layer in trimtune.core.state.layers(tiny_bert)) == before == 0.5
    assert not torch.allclose(tiny_bert(token_ids).logits, expected)  # the pruned part of BA is dropped
    plain = trimtune.unload(tiny_bert, merge_adapters=True)
    query = plain.bert.encoder.layer[0].attention.self.query
    assert type(query) is nn.Linear and float((query.weight == 0).float().mean()) == 0.5


def test_lora_dense_merge_keeps_output_and_fills_in(tiny_bert, token_ids):
    prune(tiny_bert, PruneConfig(amount=0.5, targets=["query", "value"]))
    trimtune.apply(tiny_bert, trimtune.LoraConfig(r=4))
    for _, layer in trimtune.core.state.layers(tiny_bert):
        nn.init.normal_(layer.deltas["default"].lora_B)
    expected = tiny_bert(token_ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # outputs are kept: nothing to warn about
        trimtune.merge(tiny_bert, keep_sparsity=False)
    assert torch.allclose(tiny_bert(token_ids).logits, expected, atol=1e-5)
    query = wrap(tiny_bert, "bert.encoder.layer.0.attention.self.query")
    assert query.weight_mask is None and float((query.weight == 0).float().mean()) < 0.01


def _pruned_with_lora(model, **lora):
    prune(model, PruneConfig(amount=0.5, targets=["query", "value"]))
    trimtune.apply(model, trimtune.LoraConfig(r=4, **lora))
    for _, layer in trimtune.core.state.layers(model):
        nn.init.normal_(layer.deltas["default"].lora_B)
    return model


def test_follow_mask_lora_trains_masked_and_its_sparse_merge_is_exact(tiny_bert, token_ids):
    factored = _pruned_with_lora(copy.deepcopy(tiny_bert))
    model = _pruned_with_lora(tiny_bert, follow_mask=True)
    factored.load_state_dict(model.state_dict())  # the same factors, added unmasked
    assert factored(token_ids).logits.sub(model(token_ids).logits).abs().max() > 1e-3  # BA on pruned entries counts there (logits ~1e-2)
    params = [p for p in model.parameters() if p.requires_grad]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if ".lora_" in n}
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(token_ids).logits, torch.tensor([0, 2]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    expected = model(token_ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is dropped: no warning
        plain = trimtune.unload(model, merge_adapters=True)
    torch.testing.assert_close(plain(token_ids).logits, expected, atol=1e-5, rtol=1e-5)
    query = plain.bert.encoder.layer[0].attention.self.query
    assert type(query) is nn.Linear and float((query.weight == 0).float().mean()) == 0.5


def test_follow_mask_lora_file_round_trip_and_bad_input(tiny_bert, token_ids, tmp_path, tiny_llama):
    import json

    from trimtune.verbs.files import load_adapter, save_adapter

    fresh = copy.deepcopy(tiny_bert)
    model = _pruned_with_lora(tiny_bert, follow_mask=True)
    save_adapter(model, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["trimtune_follow_mask"] is True
    prune(fresh, PruneConfig(amount=0.5, targets=["query", "value"]))
    load_adapter(fresh, tmp_path / "a")
    assert type(wrap(fresh, "bert.encoder.layer.0.attention.self.query").deltas["default"]).__name__ == "MaskedLoraDelta"
    torch.testing.assert_close(fresh(token_ids).logits, model(token_ids).logits, atol=1e-6, rtol=1e-6)
    with pytest.raises(trimtune.ConfigError, match="follow_mask=True trains the change as .* set dropout=0"):
        trimtune.LoraConfig(follow_mask=True, dropout=0.1)
    with pytest.raises(ValueError, match="follow_mask=True adds BA to the weight, but .* 4-bit"):
        trimtune.apply(tiny_llama, trimtune.QLoraConfig(r=4, follow_mask=True))
