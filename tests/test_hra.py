"""HRA against peft's ``HRAConfig``: init, logits, training, merging, files both ways (atol 1e-5), on a
tiny Llama, with and without Gram-Schmidt."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch

import trimtune as tt
from trimtune.core.state import layers

from _peft_parity import assert_merges_like_peft, assert_parity, copy_from_peft
from _training_helpers import adamw_losses

TARGETS = ["q_proj", "v_proj", "down_proj"]  # down_proj: 64 inputs, the others 32
GS = [False, True]


def _out(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _pair(model, r=4, apply_gs=False):
    """peft's HRA and ours on copies of ``model``, ours holding peft's vectors (randomised: peft's init
    pairs them into the identity, so the adapter would change nothing)."""
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.HRAConfig(r=r, apply_GS=apply_gs, target_modules=TARGETS))
    ours = tt.apply(copy.deepcopy(model), tt.HRAConfig(r=r, apply_gs=apply_gs, targets=TARGETS))
    copy_from_peft(theirs, ours)  # asserts every tensor has peft's shape
    return ours, theirs


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"r": 0}, "r must be an integer >= 1, got 0"),
    ({"apply_gs": "yes"}, "apply_gs must be True or False, got 'yes'"),
    ({"init": "zeros"}, "init must be one of 'default', 'random', got 'zeros'"),
    ({"bias": "hra_only"}, "bias must be one of 'none', 'all', got 'hra_only'"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.HRAConfig(**kwargs)


def test_r_wider_than_a_layer_is_refused_and_the_model_is_unchanged(tiny_llama, token_ids):
    base, keys = _out(tiny_llama, token_ids), list(tiny_llama.state_dict())
    with pytest.raises(tt.ConfigError, match=r"r=33 is larger than the input width of model.layers.0.self_attn.q_proj "
                                             r"\(32\); .* r must be at most the narrowest target's input width"):
        tt.apply(tiny_llama, tt.HRAConfig(r=33, targets=["down_proj", "q_proj"]))  # down_proj (64 inputs) accepts it
    assert list(tiny_llama.state_dict()) == keys and not list(layers(tiny_llama)) and tt.active_adapters(tiny_llama) == []
    torch.testing.assert_close(_out(tiny_llama, token_ids), base, atol=0, rtol=0)


def test_layers_other_than_linear_are_refused(tiny_llama, tiny_gpt2):
    with pytest.raises(ValueError, match=r"HRA supports Linear layers; model.embed_tokens is Embedding"):
        tt.apply(tiny_llama, tt.HRAConfig(targets=["q_proj", "embed_tokens"]))
    assert not list(layers(tiny_llama))
    with pytest.raises(ValueError, match=r"HRA supports Linear layers; transformer.h.0.attn.c_attn is Conv1D"):
        tt.apply(tiny_gpt2, tt.HRAConfig(targets=["c_attn"]))  # peft's HRA refuses GPT-2's Conv1D too


@pytest.mark.parametrize("apply_gs", GS)
def test_starts_as_the_identity_then_gives_peft_logits(apply_gs, tiny_llama, token_ids):
    base = _out(tiny_llama, token_ids)
    ours = tt.apply(copy.deepcopy(tiny_llama), tt.HRAConfig(r=4, apply_gs=apply_gs, targets=TARGETS))
    vectors = next(layers(ours))[1].deltas["default"].hra_u
    assert vectors.shape == (32, 4) and torch.equal(vectors[:, 0], vectors[:, 1])  # pairs, as peft's init
    if not apply_gs:  # each pair of equal reflections cancels (with Gram-Schmidt a pair spans one direction: not I)
        torch.testing.assert_close(_out(ours, token_ids), base, atol=1e-5, rtol=0)
    ours, theirs = _pair(tiny_llama, apply_gs=apply_gs)
    assert_parity(_out(ours, token_ids), _out(theirs, token_ids), base)


def test_an_odd_r_warns_and_starts_random_as_in_peft(tiny_llama, token_ids):
    with pytest.warns(UserWarning, match=r"odd r \(3\) cannot pair"):
        tt.apply(tiny_llama, tt.HRAConfig(r=3, targets=["q_proj"]))
    assert not torch.equal(*next(layers(tiny_llama))[1].deltas["default"].hra_u[:, :2].T)


@pytest.mark.parametrize("apply_gs", GS)
def test_training_losses_match_peft(apply_gs, tiny_llama):
    ours, theirs = _pair(tiny_llama, apply_gs=apply_gs)
    torch.manual_seed(5)
    batches = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (4, 2, 8))]
    losses = [adamw_losses(m, batches, lr=1e-2) for m in (ours, theirs)]
    assert losses[0][0] != losses[0][-1]  # it trains
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("apply_gs", GS)
def test_merge_gives_peft_merged_weights_and_unmerge_restores(apply_gs, tiny_llama, token_ids):
    ours, theirs = _pair(tiny_llama, apply_gs=apply_gs)
    assert_merges_like_peft(ours, theirs, lambda m: _out(m, token_ids), _out(tiny_llama, token_ids))


@pytest.mark.parametrize("apply_gs", GS)
def test_files_both_ways_with_peft(apply_gs, tiny_llama, token_ids, tmp_path):
    ours, theirs = _pair(tiny_llama, apply_gs=apply_gs)
    live, base = _out(ours, token_ids), _out(tiny_llama, token_ids)
    tt.save_adapter(ours, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["peft_type"] == "HRA" and config["apply_GS"] is apply_gs and config["r"] == 4
    assert_parity(_out(peft.PeftModel.from_pretrained(copy.deepcopy(tiny_llama), tmp_path / "ours").eval(), token_ids),
                  live, base)
    theirs.save_pretrained(tmp_path / "theirs")
    fresh = copy.deepcopy(tiny_llama)
    loaded = tt.load_adapter(fresh, tmp_path / "theirs")
    assert type(loaded) is tt.HRAConfig and (loaded.r, loaded.apply_gs) == (4, apply_gs)
    assert_parity(_out(fresh, token_ids), live, base)


def test_a_pruned_layer_merges_only_with_its_mask_folded_in(tiny_llama, token_ids):
    tt.apply(tiny_llama, tt.HRAConfig(r=4, targets=["q_proj"], init="random"))
    _, layer = next(layers(tiny_llama))
    layer.set_mask(torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5)
    live, weight = _out(tiny_llama, token_ids), layer.weight.detach().clone()
    with pytest.raises(ValueError, match=r"\(W ⊙ M\) H, which the mask cannot keep .* keep_sparsity=False"):
        tt.merge(tiny_llama)
    assert torch.equal(layer.weight, weight) and layer.merged == ()
    tt.merge(tiny_llama, keep_sparsity=False)
    torch.testing.assert_close(_out(tiny_llama, token_ids), live, atol=1e-5, rtol=0)


def test_recipe_method_type_builds_the_config():
    from trimtune.recipes.load import validate

    recipe = validate({"model": {"path": "minilm"}, "data": {"train": "demo"},
                       "method": {"type": "hra", "r": 4, "apply_gs": True, "targets": "query|value"}})
    config = recipe.method.build()
    assert type(config) is tt.HRAConfig and config.r == 4 and config.apply_gs is True
