"""HiRA against peft's ``HiraConfig``: init, logits, dropout, training, merging, files both ways (atol 1e-5),
on a tiny Llama (Linear) and a tiny GPT-2 (Conv1D, weight stored (in, out))."""

from __future__ import annotations

import copy
import json
import warnings

import peft
import pytest
import torch

import trimtune as tt
from trimtune.core.state import layers

from _peft_parity import assert_merges_like_peft, assert_parity, copy_from_peft
from _training_helpers import adamw_losses

TARGETS = {"tiny_llama": ["q_proj", "v_proj", "down_proj"], "tiny_gpt2": ["c_attn", "c_fc"]}
MODELS = list(TARGETS)


def _out(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _pair(model, fixture, r=4, dropout=0.0):
    """peft's HiRA and ours on copies of ``model``, ours holding peft's (randomised) A and B."""
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.HiraConfig(
        r=r, hira_dropout=dropout, target_modules=TARGETS[fixture], fan_in_fan_out=fixture == "tiny_gpt2"))
    ours = tt.apply(copy.deepcopy(model), tt.HiraConfig(r=r, dropout=dropout, targets=TARGETS[fixture]))
    copy_from_peft(theirs, ours)  # asserts every tensor has peft's shape
    return ours, theirs


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"r": 0}, "r must be an integer >= 1, got 0"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1.0"),
    ({"init": "zeros"}, "init must be one of 'default', 'gaussian', 'random', got 'zeros'"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.HiraConfig(**kwargs)


def test_embeddings_are_refused_and_the_model_is_unchanged(tiny_llama):
    keys = list(tiny_llama.state_dict())
    with pytest.raises(ValueError, match=r"HiRA supports Linear and GPT-2 Conv1D layers; model.embed_tokens is Embedding"):
        tt.apply(tiny_llama, tt.HiraConfig(targets=["q_proj", "embed_tokens"]))  # q_proj wrapped first
    assert list(tiny_llama.state_dict()) == keys and not list(layers(tiny_llama))


@pytest.mark.parametrize("fixture", MODELS)
def test_starts_unchanged_then_gives_peft_logits(fixture, request, token_ids):
    model = request.getfixturevalue(fixture)
    base = _out(model, token_ids)
    ours = tt.apply(copy.deepcopy(model), tt.HiraConfig(r=4, targets=TARGETS[fixture]))
    torch.testing.assert_close(_out(ours, token_ids), base, atol=0, rtol=0)  # B starts at zero
    ours, theirs = _pair(model, fixture)
    assert_parity(_out(ours, token_ids), _out(theirs, token_ids), base)


def test_dropout_matches_peft(tiny_llama, token_ids):
    ours, theirs = _pair(tiny_llama, "tiny_llama", dropout=0.3)
    ours.train(), theirs.train()
    torch.manual_seed(11)
    theirs_out = theirs(input_ids=token_ids).logits
    torch.manual_seed(11)
    ours_out = ours(input_ids=token_ids).logits
    torch.manual_seed(12)
    assert_parity(ours_out, theirs_out, ours(input_ids=token_ids).logits)


def test_training_losses_match_peft(tiny_llama):
    ours, theirs = _pair(tiny_llama, "tiny_llama")
    torch.manual_seed(5)
    batches = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (4, 2, 8))]
    losses = [adamw_losses(m, batches, lr=1e-2) for m in (ours, theirs)]
    assert losses[0][0] != losses[0][-1]  # it trains
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", MODELS)
def test_merge_gives_peft_merged_weights_and_unmerge_restores(fixture, request, token_ids):
    model = request.getfixturevalue(fixture)
    ours, theirs = _pair(model, fixture)
    assert_merges_like_peft(ours, theirs, lambda m: _out(m, token_ids), _out(model, token_ids))


@pytest.mark.parametrize("fixture", MODELS)
def test_files_both_ways_with_peft(fixture, request, token_ids, tmp_path):
    model = request.getfixturevalue(fixture)
    ours, theirs = _pair(model, fixture)
    live, base = _out(ours, token_ids), _out(model, token_ids)
    tt.save_adapter(ours, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["peft_type"] == "HIRA" and config["fan_in_fan_out"] is (fixture == "tiny_gpt2")
    assert_parity(_out(peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "ours").eval(), token_ids), live, base)
    theirs.save_pretrained(tmp_path / "theirs")
    fresh = copy.deepcopy(model)
    loaded = tt.load_adapter(fresh, tmp_path / "theirs")
    assert type(loaded) is tt.HiraConfig and loaded.r == 4
    assert_parity(_out(fresh, token_ids), live, base)


def test_a_peft_rank_pattern_is_ignored_as_peft_ignores_it(tiny_llama, token_ids, tmp_path):
    """peft 0.21.2 builds every HiRA layer with r, whatever rank_pattern says; its file loads the same way here."""
    theirs = peft.get_peft_model(copy.deepcopy(tiny_llama), peft.HiraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                             rank_pattern={"v_proj": 2}))
    assert theirs.base_model.model.model.layers[0].self_attn.v_proj.hira_A["default"].shape == (4, 32)
    theirs.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"rank_pattern=\{'v_proj': 2\}, which peft's HiRA ignores \(every layer has r=4\)"):
        tt.load_adapter(tiny_llama, tmp_path)
    torch.testing.assert_close(_out(tiny_llama, token_ids), _out(theirs, token_ids), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_on_a_pruned_layer_the_change_keeps_the_zeros_and_merges_exactly(dropout, tiny_llama, token_ids):
    tt.apply(tiny_llama, tt.HiraConfig(r=2, targets=["q_proj"], init="random", dropout=dropout))
    _, layer = next(layers(tiny_llama))
    mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    layer.set_mask(mask)
    live, weight = _out(tiny_llama, token_ids), layer.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the change is zero on pruned entries: the sparse merge drops nothing
        tt.merge(tiny_llama)  # keep_sparsity: W + ΔW ⊙ M under the mask, what the forward computed
    assert torch.equal(layer.weight[~mask], weight[~mask]) and not torch.equal(layer.weight[mask], weight[mask])
    torch.testing.assert_close(_out(tiny_llama, token_ids), live, atol=1e-6, rtol=0)
    tt.unmerge(tiny_llama)
    assert torch.equal(layer.weight, weight)  # the weight kept at merge time


def test_recipe_method_type_builds_the_config():
    from trimtune.recipes.load import validate

    recipe = validate({"model": {"path": "minilm"}, "data": {"train": "demo"},
                       "method": {"type": "hira", "r": 16, "dropout": 0.1, "targets": "query|value"}})
    config = recipe.method.build()
    assert type(config) is tt.HiraConfig and config.r == 16 and config.dropout == 0.1
