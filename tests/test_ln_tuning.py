"""LN tuning against peft's ``LNTuningConfig``: which norms train, logits, training, merging, files (atol 1e-5)."""

from __future__ import annotations

import copy
import json
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file

import trimtune as tt

from _peft_parity import assert_parity, copy_from_peft, peft_copy_to_ours_key
from _training_helpers import adamw_losses

PEFT_TARGETS = {"tiny_llama": None, "tiny_gpt2": None, "tiny_bert": ["LayerNorm"]}  # peft has no BERT default


def _pair(model, fixture):
    """peft's LN tuning and ours on copies of ``model``, ours holding peft's (randomised) norm copies."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that it does not know RMSNorm's class (it copies it anyway)
        theirs = peft.get_peft_model(copy.deepcopy(model), peft.LNTuningConfig(target_modules=PEFT_TARGETS[fixture]))
    ours = tt.apply(copy.deepcopy(model), tt.LNTuningConfig())
    copy_from_peft(theirs, ours, key_map=peft_copy_to_ours_key)
    return ours, theirs


def _out(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _trainable(model) -> list[str]:
    return [n.removeprefix("base_model.model.").replace(".ln_tuning_layers.default.", ".copies.default.")
            for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2", "tiny_bert"])
def test_the_same_norms_train_and_give_the_same_logits_as_peft(fixture, request, token_ids):
    model = request.getfixturevalue(fixture)
    keys = set(model.state_dict())
    ours, theirs = _pair(model, fixture)
    assert _trainable(ours) == _trainable(theirs) and _trainable(ours)
    assert keys <= set(ours.state_dict())  # the originals keep their keys; the copies are new entries
    assert_parity(_out(ours.eval(), token_ids), _out(theirs.eval(), token_ids), _out(model, token_ids))


def test_a_fresh_adapter_changes_nothing_and_a_bad_target_changes_nothing(tiny_llama, token_ids):
    base, keys = _out(tiny_llama, token_ids), set(tiny_llama.state_dict())
    with pytest.raises(tt.TargetError, match=r"LN tuning target model.layers.0.mlp \(LlamaMLP\) is not a normalisation layer"):
        tt.apply(tiny_llama, tt.LNTuningConfig(targets=["norm", "model.layers.0.mlp"]))
    with pytest.raises(tt.TargetError, match=r"LN tuning targets matched no module \(\['ln_9'\]\)"):
        tt.apply(tiny_llama, tt.LNTuningConfig(targets=["ln_9"]))
    assert set(tiny_llama.state_dict()) == keys and tt.active_adapters(tiny_llama) == []
    tt.apply(tiny_llama, tt.LNTuningConfig())
    torch.testing.assert_close(_out(tiny_llama, token_ids), base, atol=0, rtol=0)


def test_training_losses_match_peft(tiny_llama):
    ours, theirs = _pair(tiny_llama, "tiny_llama")
    torch.manual_seed(5)
    batches = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (4, 2, 8))]
    losses = [adamw_losses(model, batches) for model in (ours, theirs)]
    assert losses[0][0] != losses[0][-1]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_merge_gives_peft_merged_weights_and_unmerge_restores(fixture, request, token_ids):
    model = request.getfixturevalue(fixture)
    ours, theirs = _pair(model, fixture)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    live = _out(ours, token_ids)
    tt.merge(ours)
    torch.testing.assert_close(_out(ours, token_ids), live, atol=0, rtol=0)
    merged = {k: v for k, v in ours.state_dict().items() if ".copies." not in k}
    for key, weight in theirs.merge_and_unload().state_dict().items():
        torch.testing.assert_close(merged[key], weight, atol=0, rtol=0)
    assert any(not torch.equal(merged[k], base[k]) for k in base)
    tt.unmerge(ours)
    for key, value in base.items():
        torch.testing.assert_close(ours.state_dict()[key], value, atol=0, rtol=0)
    torch.testing.assert_close(_out(ours, token_ids), live, atol=0, rtol=0)
    plain = tt.unload(ours, merge_adapters=True)  # the trained norms stay, trimtune goes
    assert set(plain.state_dict()) == set(base)
    torch.testing.assert_close(_out(plain, token_ids), live, atol=0, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2", "tiny_bert"])
def test_trimtune_writes_peft_reads(fixture, request, token_ids, tmp_path):
    model = request.getfixturevalue(fixture)
    ours, theirs = _pair(model, fixture)
    tt.save_adapter(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LN_TUNING"
    assert set(load_file(tmp_path / "adapter_model.safetensors")) == set(peft.get_peft_model_state_dict(theirs))
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path).eval()
    assert_parity(_out(loaded, token_ids), _out(ours, token_ids), _out(model, token_ids))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_peft_writes_trimtune_reads(fixture, request, token_ids, tmp_path):
    model = request.getfixturevalue(fixture)
    _, theirs = _pair(model, fixture)
    theirs.save_pretrained(tmp_path)
    ours = copy.deepcopy(model)
    assert type(tt.load_adapter(ours, tmp_path)) is tt.LNTuningConfig
    assert_parity(_out(ours, token_ids), _out(theirs.eval(), token_ids), _out(model, token_ids))


def test_two_adapters_switch_and_delete(tiny_gpt2, token_ids):
    base = _out(tiny_gpt2, token_ids)
    tt.apply(tiny_gpt2, tt.LNTuningConfig(), name="a")
    tt.apply(tiny_gpt2, tt.LNTuningConfig(targets=["ln_f"]), name="b")
    with torch.no_grad():
        tiny_gpt2.transformer.ln_f.copies["b"].weight.mul_(2)
    tt.set_adapter(tiny_gpt2, "b")
    assert [n for n, p in tiny_gpt2.named_parameters() if p.requires_grad] == ["transformer.ln_f.copies.b.weight",
                                                                              "transformer.ln_f.copies.b.bias"]
    assert not torch.allclose(_out(tiny_gpt2, token_ids), base)
    tt.delete_adapter(tiny_gpt2, "b")
    tt.set_adapter(tiny_gpt2, "a")
    torch.testing.assert_close(_out(tiny_gpt2, token_ids), base, atol=0, rtol=0)


def test_recipe_method_type_ln_tuning_builds_its_config():
    from trimtune.recipes.load import validate

    recipe = validate({"model": {"path": "minilm"}, "data": {"train": "demo"},
                       "method": {"type": "ln_tuning", "modules_to_save": ["classifier"]}})
    config = recipe.method.build()
    assert type(config) is tt.LNTuningConfig and config.modules_to_save == ["classifier"]
