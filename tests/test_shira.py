"""SHiRA against peft's ``ShiraConfig``: the seeded entries, logits, training, merging, files both ways
(values + indices; atol 1e-5), on a tiny Llama."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

import trimtune as tt
from trimtune.core.state import layers

from _peft_parity import assert_merges_like_peft, assert_parity, copy_from_peft
from _training_helpers import adamw_losses

TARGETS = ["q_proj", "v_proj", "down_proj"]  # (32 x 32), (16 x 32), (32 x 64): 2 · (out + in) entries each at r=2


def _out(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _pair(model, r=2, random_seed=None):
    """peft's SHiRA and ours on copies of ``model``, ours holding peft's (randomised) values."""
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.ShiraConfig(r=r, random_seed=random_seed, target_modules=TARGETS))
    ours = tt.apply(copy.deepcopy(model), tt.ShiraConfig(r=r, random_seed=random_seed, targets=TARGETS))
    copy_from_peft(theirs, ours)  # asserts every tensor has peft's shape
    return ours, theirs


def _indices(model) -> dict[str, torch.Tensor]:
    """Each target's (2, count) indices, by its name in the unwrapped model; peft's or ours."""
    if hasattr(model, "peft_config"):
        return {n.removeprefix("base_model.model."): m.shira_indices["default"] for n, m in model.named_modules()
                if hasattr(m, "shira_indices")}
    return {n: layer.deltas["default"].shira_indices for n, layer in layers(model)}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"r": 0}, "r must be an integer >= 1, got 0"),
    ({"mask_type": "magnitude"}, "mask_type must be one of 'random', got 'magnitude'"),
    ({"random_seed": "7"}, "random_seed must be an integer seed or None, got '7'"),
    ({"init": "gaussian"}, "init must be one of 'default', 'random', got 'gaussian'"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.ShiraConfig(**kwargs)


def test_more_entries_than_a_weight_has_is_refused_and_the_model_is_unchanged(tiny_llama, token_ids):
    base, keys = _out(tiny_llama, token_ids), list(tiny_llama.state_dict())
    with pytest.raises(tt.ConfigError, match=r"r=17 asks for r · \(out \+ in\) = 1088 trained entries of "
                                             r"model.layers.0.self_attn.q_proj, which has only 1024 \(32 x 32\); .*at most 16"):
        tt.apply(tiny_llama, tt.ShiraConfig(r=17, targets=["down_proj", "q_proj"]))  # down_proj (32 x 64) takes 1632
    assert list(tiny_llama.state_dict()) == keys and not list(layers(tiny_llama)) and tt.active_adapters(tiny_llama) == []
    torch.testing.assert_close(_out(tiny_llama, token_ids), base, atol=0, rtol=0)


def test_layers_other_than_linear_are_refused(tiny_llama, tiny_gpt2):
    with pytest.raises(ValueError, match=r"SHiRA supports Linear layers; model.embed_tokens is Embedding"):
        tt.apply(tiny_llama, tt.ShiraConfig(r=2, targets=["q_proj", "embed_tokens"]))
    assert not list(layers(tiny_llama))
    with pytest.raises(ValueError, match=r"SHiRA supports Linear layers; transformer.h.0.attn.c_attn is Conv1D"):
        tt.apply(tiny_gpt2, tt.ShiraConfig(r=2, targets=["c_attn"]))  # peft's SHiRA takes nn.Linear only too


@pytest.mark.parametrize("random_seed", [None, 3])
def test_same_entries_as_peft_starts_unchanged_then_gives_peft_logits(random_seed, tiny_llama, token_ids):
    base = _out(tiny_llama, token_ids)
    ours = tt.apply(copy.deepcopy(tiny_llama), tt.ShiraConfig(r=2, random_seed=random_seed, targets=TARGETS))
    torch.testing.assert_close(_out(ours, token_ids), base, atol=0, rtol=0)  # values start at zero
    ours, theirs = _pair(tiny_llama, random_seed=random_seed)
    ours_indices, theirs_indices = _indices(ours), _indices(theirs)
    assert ours_indices.keys() == theirs_indices.keys() and len(ours_indices) == 6
    for name, indices in ours_indices.items():
        assert indices.dtype == torch.int32 and torch.equal(indices, theirs_indices[name]), name
    assert ours_indices["model.layers.0.mlp.down_proj"].shape == (2, 2 * (32 + 64))
    assert_parity(_out(ours, token_ids), _out(theirs, token_ids), base)
    # the change is on those entries only
    _, layer = next(layers(ours))
    change = layer.deltas["default"].delta_weight()
    rows, cols = layer.deltas["default"].shira_indices.long()
    assert torch.equal(change[rows, cols], layer.deltas["default"].shira_weight.detach())
    assert torch.count_nonzero(change) == rows.numel()


def test_another_seed_draws_other_entries(tiny_llama):
    indices = [_indices(tt.apply(copy.deepcopy(tiny_llama), tt.ShiraConfig(r=2, random_seed=s, targets=["q_proj"])))
               for s in (None, 3)]
    name = "model.layers.0.self_attn.q_proj"
    assert not torch.equal(indices[0][name], indices[1][name])


def test_training_losses_match_peft(tiny_llama):
    ours, theirs = _pair(tiny_llama, random_seed=5)
    torch.manual_seed(5)
    batches = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (4, 2, 8))]
    losses = [adamw_losses(m, batches, lr=1e-2) for m in (ours, theirs)]
    assert losses[0][0] != losses[0][-1]  # it trains
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)


def test_merge_gives_peft_merged_weights_and_unmerge_restores(tiny_llama, token_ids):
    ours, theirs = _pair(tiny_llama)
    assert_merges_like_peft(ours, theirs, lambda m: _out(m, token_ids), _out(tiny_llama, token_ids))


def test_files_both_ways_with_peft_and_the_files_entries_win(tiny_llama, token_ids, tmp_path):
    ours, theirs = _pair(tiny_llama, random_seed=3)
    live, base = _out(ours, token_ids), _out(tiny_llama, token_ids)
    tt.save_adapter(ours, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SHIRA" and (config["r"], config["random_seed"], config["mask_type"]) == (2, 3, "random")
    tensors = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.shira_indices"].dtype == torch.int32
    assert_parity(_out(peft.PeftModel.from_pretrained(copy.deepcopy(tiny_llama), tmp_path / "ours").eval(), token_ids),
                  live, base)
    theirs.save_pretrained(tmp_path / "theirs")
    fresh = copy.deepcopy(tiny_llama)
    loaded = tt.load_adapter(fresh, tmp_path / "theirs")
    assert type(loaded) is tt.ShiraConfig and (loaded.r, loaded.random_seed) == (2, 3)
    assert_parity(_out(fresh, token_ids), live, base)
    # entries other than the seed's (e.g. chosen by a custom mask in peft) load from the file
    key = "base_model.model.model.layers.0.self_attn.q_proj.shira_indices"
    tensors[key] = tensors[key].flip(1)  # same entries, values now on each other's places
    save_file(tensors, tmp_path / "ours" / "adapter_model.safetensors")
    expected = peft.PeftModel.from_pretrained(copy.deepcopy(tiny_llama), tmp_path / "ours").eval()
    fresh = copy.deepcopy(tiny_llama)
    tt.load_adapter(fresh, tmp_path / "ours")
    assert_parity(_out(fresh, token_ids), _out(expected, token_ids), live)


def test_on_a_pruned_layer_the_change_keeps_the_zeros_and_merges_exactly(tiny_llama, token_ids):
    tt.apply(tiny_llama, tt.ShiraConfig(r=2, targets=["q_proj"], init="random"))
    _, layer = next(layers(tiny_llama))
    mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    layer.set_mask(mask)
    live, weight = _out(tiny_llama, token_ids), layer.weight.detach().clone()
    tt.merge(tiny_llama)  # keep_sparsity: W + ΔW ⊙ M, what the forward computed
    assert torch.equal(layer.weight[~mask], weight[~mask]) and not torch.equal(layer.weight[mask], weight[mask])
    torch.testing.assert_close(_out(tiny_llama, token_ids), live, atol=1e-6, rtol=0)
    tt.unmerge(tiny_llama)
    torch.testing.assert_close(layer.weight, weight, atol=1e-6, rtol=0)


def test_recipe_method_type_builds_the_config():
    from trimtune.recipes.load import validate

    recipe = validate({"model": {"path": "minilm"}, "data": {"train": "demo"},
                       "method": {"type": "shira", "r": 8, "random_seed": 1, "targets": "query|value"}})
    config = recipe.method.build()
    assert type(config) is tt.ShiraConfig and config.r == 8 and config.random_seed == 1
