"""Trainable tokens against peft's ``TrainableTokensConfig``: chosen embedding rows, tied heads, logits,
training, merging, files (atol 1e-5)."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from safetensors.torch import load_file

import trimtune as tt
from trimtune.core.state import layers

from _peft_parity import assert_parity, copy_from_peft
from _training_helpers import adamw_losses

TOKENS = [5, 7, 42]
IDS = torch.tensor([[5, 7, 9, 5, 3, 42, 11], [7, 7, 1, 2, 3, 60, 5]])  # the chosen tokens occur, and others


@pytest.fixture
def tied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=128, tie_word_embeddings=True,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def _pair(model):
    """peft's trainable tokens and ours on copies of ``model``, ours holding peft's (randomised) rows."""
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.TrainableTokensConfig(token_indices=TOKENS))
    ours = tt.apply(copy.deepcopy(model), tt.TrainableTokensConfig(token_indices=TOKENS))
    copy_from_peft(theirs, ours)
    return ours, theirs


def _out(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"token_indices": []}, r"token_indices must be a non-empty list of token ids \(integers >= 0\), got \[\]"),
    ({"token_indices": [3, -1]}, r"token_indices must be a non-empty list .*got \[3, -1\]"),
    ({"token_indices": "5"}, "token_indices must be a list of token ids"),
    ({"token_indices": [5, 6, 5]}, r"token_indices must name each token once; \[5\] appear more than once"),
    ({"token_indices": [5], "init_weights": "yes"}, "init_weights must be True or False, got 'yes'"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.TrainableTokensConfig(**kwargs)


def test_token_ids_outside_the_vocabulary_are_refused_before_the_model_changes(tied_llama):
    keys, base = set(tied_llama.state_dict()), _out(tied_llama)
    with pytest.raises(tt.ConfigError, match=r"token_indices holds \[100, 250\], outside the 100 rows of model.embed_tokens "
                                             r"\(allowed: 0 to 99\)"):
        tt.apply(tied_llama, tt.TrainableTokensConfig(token_indices=[5, 100, 250]))
    assert set(tied_llama.state_dict()) == keys and not list(layers(tied_llama)) and tt.active_adapters(tied_llama) == []
    torch.testing.assert_close(_out(tied_llama), base, atol=0, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tied_llama", "tiny_gpt2"])
def test_only_the_rows_train_and_logits_match_peft(fixture, request):
    model = request.getfixturevalue(fixture)
    fresh = tt.apply(copy.deepcopy(model), tt.TrainableTokensConfig(token_indices=TOKENS))
    # init_weights: unchanged until trained (a tied head recomputes the chosen logits in a smaller product: rounding)
    torch.testing.assert_close(_out(fresh), _out(model), atol=1e-6, rtol=0)
    ours, theirs = _pair(model)
    trainable = [(n, tuple(p.shape)) for n, p in ours.named_parameters() if p.requires_grad]
    embedding = "transformer.wte" if fixture == "tiny_gpt2" else "model.embed_tokens"
    assert trainable == [(f"{embedding}.deltas.default.trainable_tokens_delta", (3, 32))]
    tied = fixture != "tiny_llama"
    assert [n for n, _ in layers(ours)] == ([embedding, "lm_head"] if tied else [embedding])
    assert_parity(_out(ours), _out(theirs.eval()), _out(model))


def test_a_tied_head_changes_the_chosen_logits_only(tied_llama):
    ours, _ = _pair(tied_llama)
    hidden = ours.model(input_ids=IDS).last_hidden_state
    logits = _out(ours)
    head = tied_llama.lm_head.weight
    untouched = [i for i in range(100) if i not in TOKENS]
    torch.testing.assert_close(logits[..., untouched], (hidden @ head.T)[..., untouched], atol=1e-5, rtol=0)
    rows = ours.model.embed_tokens.deltas["default"].trainable_tokens_delta
    torch.testing.assert_close(logits[..., TOKENS], hidden @ rows.T, atol=1e-5, rtol=0)
    assert (logits[..., TOKENS] - (hidden @ head.T)[..., TOKENS]).abs().max() > 0.1


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_training_losses_match_peft(fixture, request):
    ours, theirs = _pair(request.getfixturevalue(fixture))
    batches = [{"input_ids": IDS.roll(s, 1), "labels": IDS.roll(s + 1, 1)} for s in range(4)]
    losses = [adamw_losses(model, batches, seed=3) for model in (ours, theirs)]  # GPT-2's dropout: the same draws
    assert losses[0][0] != losses[0][-1]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_merge_gives_peft_merged_weights_and_unmerge_restores(fixture, request):
    model = request.getfixturevalue(fixture)
    ours, theirs = _pair(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    live = _out(ours)
    tt.merge(ours)
    torch.testing.assert_close(_out(ours), live, atol=1e-5, rtol=0)
    merged = ours.state_dict()
    for key, weight in theirs.merge_and_unload().state_dict().items():
        torch.testing.assert_close(merged[key], weight, atol=0, rtol=0)
    tt.unmerge(ours)
    for key, value in before.items():
        torch.testing.assert_close(ours.state_dict()[key], value, atol=0, rtol=0)
    plain = tt.unload(ours, merge_adapters=True)
    assert set(plain.state_dict()) == set(before)
    torch.testing.assert_close(_out(plain), live, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_trimtune_writes_peft_reads(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    ours, theirs = _pair(model)
    tt.save_adapter(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "TRAINABLE_TOKENS" and config["token_indices"] == TOKENS
    assert set(load_file(tmp_path / "adapter_model.safetensors")) == set(peft.get_peft_model_state_dict(theirs))
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path).eval()
    assert_parity(_out(loaded), _out(ours), _out(model))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_peft_writes_trimtune_reads(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    _, theirs = _pair(model)
    theirs.save_pretrained(tmp_path)
    ours = copy.deepcopy(model)
    config = tt.load_adapter(ours, tmp_path)
    assert type(config) is tt.TrainableTokensConfig and config.token_indices == TOKENS
    assert_parity(_out(ours), _out(theirs.eval()), _out(model))


def test_recipe_names_token_indices_when_they_are_wrong():
    from trimtune.recipes import RecipeError
    from trimtune.recipes.load import validate

    base = {"model": {"path": "minilm"}, "data": {"train": "demo"}}
    recipe = validate({**base, "method": {"type": "trainable_tokens", "token_indices": [3, 4]}})
    assert type(recipe.method.build()) is tt.TrainableTokensConfig
    with pytest.raises(RecipeError, match=r"method.token_indices must be a non-empty list"):
        validate({**base, "method": {"type": "trainable_tokens", "token_indices": []}})

