"""VeRA against peft's ``VeraConfig``: shared projections, init, logits, dropout, training, merging, files (atol 1e-5)."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from safetensors.torch import load_file

import trimtune as tt
from trimtune.core.state import layers

from _peft_parity import assert_merges_like_peft, assert_parity, copy_from_peft
from _training_helpers import adamw_losses

SPECS = {  # fixture -> targets (the same names for both); down_proj makes the shared A wider than q/v need
    "minilm": ["query", "value"],
    "tiny_llama": ["q_proj", "v_proj", "down_proj"],
    "tiny_gpt2": ["c_attn", "c_fc"],  # Conv1D: weight stored (in, out)
}


def _model(fixture, request):
    if fixture == "minilm":
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(0)  # the head is freshly initialised: same seed, same base
        return AutoModelForSequenceClassification.from_pretrained(request.getfixturevalue("minilm_path"), num_labels=2).eval()
    return request.getfixturevalue(fixture)


def _pair(model, fixture, r=8, dropout=0.0, save_projection=True):
    """peft's VeRA and ours on copies of ``model``, ours holding peft's (randomised) vectors."""
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.VeraConfig(
        r=r, vera_dropout=dropout, target_modules=SPECS[fixture], save_projection=save_projection))
    ours = tt.apply(copy.deepcopy(model), tt.VeraConfig(r=r, dropout=dropout, targets=SPECS[fixture],
                                                        save_projection=save_projection))
    copy_from_peft(theirs, ours)
    return ours, theirs


def _out(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _shared(model):
    return model.vera_projections.pairs["default"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"r": 0}, "r must be an integer >= 1, got 0"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ({"bias": "vera_only"}, "bias must be one of 'none', 'all'"),
    ({"projection_prng_key": "seed"}, "projection_prng_key must be an integer seed, got 'seed'"),
    ({"save_projection": "yes"}, "save_projection must be True or False"),
    ({"d_initial": None}, "d_initial must be a number, got None"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.VeraConfig(**kwargs)


def test_embeddings_are_refused_clearly(tiny_llama):
    with pytest.raises(ValueError, match=r"VeRA supports Linear and GPT-2 Conv1D layers; model.embed_tokens is Embedding"):
        tt.apply(tiny_llama, tt.VeraConfig(targets=["embed_tokens"]))
    assert tt.active_adapters(tiny_llama) == []


def test_one_shared_pair_per_model_drawn_as_peft_draws_it(tiny_llama, token_ids):
    base = _out(tiny_llama, token_ids)
    keys = set(tiny_llama.state_dict())
    theirs = peft.get_peft_model(copy.deepcopy(tiny_llama), peft.VeraConfig(r=8, target_modules=SPECS["tiny_llama"]))
    tt.apply(tiny_llama, tt.VeraConfig(r=8, targets=SPECS["tiny_llama"]))
    buffers = {n.rpartition(".vera_")[2]: b for n, b in theirs.named_buffers() if ".vera_" in n}  # A.default, B.default
    shared = _shared(tiny_llama)
    assert shared.vera_A.shape == (8, 64) and shared.vera_B.shape == (32, 8)  # widest input (down_proj), widest output
    torch.testing.assert_close(shared.vera_A, buffers["A.default"], atol=0, rtol=0)
    torch.testing.assert_close(shared.vera_B, buffers["B.default"], atol=0, rtol=0)
    deltas = [layer.deltas["default"] for _, layer in layers(tiny_llama)]
    assert len(deltas) == 6 and all(d.shared.vera_A is shared.vera_A for d in deltas)  # one tensor, not copies
    assert all(torch.all(d.vera_lambda_b == 0) and torch.all(d.vera_lambda_d == 0.1) for d in deltas)
    assert set(tiny_llama.state_dict()) - keys == {f"{n}.deltas.default.{v}" for n, _ in layers(tiny_llama)
                                                   for v in ("vera_lambda_b", "vera_lambda_d")}  # A, B not in it
    torch.testing.assert_close(_out(tiny_llama, token_ids), base, atol=0, rtol=0)  # λ_b = 0: unchanged
    tiny_llama.double()  # moving the model moves the pair once: still one tensor
    assert all(d.shared.vera_A is _shared(tiny_llama).vera_A for d in deltas)
    assert _shared(tiny_llama).vera_A.dtype == torch.float64


@pytest.mark.parametrize("fixture", ["minilm", "tiny_llama", "tiny_gpt2"])
def test_same_logits_as_peft(fixture, request, token_ids):
    model = _model(fixture, request)
    ours, theirs = _pair(model, fixture)
    assert_parity(_out(ours.eval(), token_ids), _out(theirs.eval(), token_ids), _out(model, token_ids))


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
    losses = []
    for model in (ours, theirs):
        params = [p for p in model.parameters() if p.requires_grad]
        assert len(params) == 2 * 6  # λ_b and λ_d on 2 layers x (q, v, down); A and B stay frozen
        losses.append(adamw_losses(model, batches))
    assert losses[0][0] != losses[0][-1]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_merge_gives_peft_merged_weights_and_unmerge_restores(fixture, request, token_ids):
    model = _model(fixture, request)
    ours, theirs = _pair(model, fixture)
    assert_merges_like_peft(ours, theirs, lambda m: _out(m, token_ids), _out(model, token_ids))


@pytest.mark.parametrize("save_projection", [True, False])
@pytest.mark.parametrize("fixture", ["minilm", "tiny_llama", "tiny_gpt2"])
def test_trimtune_writes_peft_reads(fixture, save_projection, request, token_ids, tmp_path):
    model = _model(fixture, request)
    ours, _ = _pair(model, fixture, save_projection=save_projection)
    tt.save_adapter(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "VERA" and config["save_projection"] is save_projection
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert ("base_model.vera_A" in keys and "base_model.vera_B" in keys) is save_projection
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path).eval()
    assert_parity(_out(loaded, token_ids), _out(ours, token_ids), _out(model, token_ids))


@pytest.mark.parametrize("save_projection", [True, False])
@pytest.mark.parametrize("fixture", ["minilm", "tiny_llama", "tiny_gpt2"])
def test_peft_writes_trimtune_reads(fixture, save_projection, request, token_ids, tmp_path):
    model = _model(fixture, request)
    _, theirs = _pair(model, fixture, save_projection=save_projection)
    theirs.save_pretrained(tmp_path)
    ours = copy.deepcopy(model)
    config = tt.load_adapter(ours, tmp_path)
    assert type(config) is tt.VeraConfig and config.r == 8 and config.save_projection is save_projection
    assert_parity(_out(ours, token_ids), _out(theirs.eval(), token_ids), _out(model, token_ids))


def test_projections_in_the_file_win_over_the_key(tiny_llama, token_ids, tmp_path):
    ours, _ = _pair(tiny_llama, "tiny_llama")
    with torch.no_grad():
        _shared(ours).vera_A.mul_(2)  # not what the key draws: only the saved matrices reproduce it
    expected = _out(ours, token_ids)
    tt.save_adapter(ours, tmp_path)
    loaded = copy.deepcopy(tiny_llama)
    tt.load_adapter(loaded, tmp_path)
    torch.testing.assert_close(_out(loaded, token_ids), expected, atol=1e-6, rtol=0)


def test_delete_and_unload_take_the_shared_pair_away(tiny_llama, token_ids):
    base = _out(tiny_llama, token_ids)
    tt.apply(tiny_llama, tt.VeraConfig(r=4), name="a")
    tt.apply(tiny_llama, tt.VeraConfig(r=4, projection_prng_key=3), name="b")
    assert list(tiny_llama.vera_projections.pairs) == ["a", "b"]
    tt.delete_adapter(tiny_llama, "a")
    assert list(tiny_llama.vera_projections.pairs) == ["b"]
    tt.unload(tiny_llama)
    assert not hasattr(tiny_llama, "vera_projections")
    torch.testing.assert_close(_out(tiny_llama, token_ids), base, atol=0, rtol=0)


def test_recipe_method_type_vera_builds_a_vera_config():
    from trimtune.recipes.load import validate

    recipe = validate({"model": {"path": "minilm"}, "data": {"train": "demo"},
                       "method": {"type": "vera", "r": 64, "targets": "query|value", "projection_prng_key": 7}})
    config = recipe.method.build()
    assert type(config) is tt.VeraConfig and config.r == 64 and config.projection_prng_key == 7


def test_shrink_refuses_a_vera_layer_before_cutting_anything(tiny_llama):
    from trimtune.shrinking import shrink

    tt.apply(tiny_llama, tt.VeraConfig(r=4, targets="all-linear"))
    with pytest.raises(ValueError, match=r"carries adapter 'default' \(VeraDelta\), which cannot be sliced"):
        shrink(tiny_llama, 0.5, example_inputs={"input_ids": torch.randint(3, 100, (2, 10))})
