"""DoRA against peft's ``LoraConfig(use_dora=True)``: init, logits, dropout, training, merging, files (atol 1e-5)."""

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

SPECS = {  # fixture -> (trimtune targets, peft target_modules); None: the architecture's default (q/v)
    "minilm": (["query", "value"], ["query", "value"]),
    "tiny_llama": (None, None),
    "tiny_gpt2": (["c_attn", "c_fc"], ["c_attn", "c_fc"]),  # Conv1D: weight stored (in, out)
}


def _model(fixture, request):
    if fixture == "minilm":
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(0)  # the head is freshly initialised: same seed, same base
        return AutoModelForSequenceClassification.from_pretrained(request.getfixturevalue("minilm_path"), num_labels=2).eval()
    return request.getfixturevalue(fixture)


def _pair(model, fixture, r=4, alpha=8, dropout=0.0):
    """peft's DoRA and ours on copies of ``model``, ours holding peft's (randomised) tensors."""
    ours_targets, peft_targets = SPECS[fixture]
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, use_dora=True, target_modules=peft_targets))
    ours = tt.apply(copy.deepcopy(model), tt.DoraConfig(r=r, alpha=alpha, dropout=dropout, targets=ours_targets))
    copy_from_peft(theirs, ours)
    return ours, theirs


def _out(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"follow_mask": True}, "follow_mask=True is not available with DoRA"),
    ({"r": 0}, "r must be an integer >= 1, got 0"),
    ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\)"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.DoraConfig(**kwargs)


def test_embeddings_and_4bit_bases_are_refused_clearly(tiny_llama):
    with pytest.raises(ValueError, match=r"DoRA supports Linear, GPT-2 Conv1D and Conv layers; model.embed_tokens is Embedding"):
        tt.apply(tiny_llama, tt.DoraConfig(targets=["embed_tokens"]))
    assert tt.active_adapters(tiny_llama) == []  # nothing half-applied
    tt.quantize_base(tiny_llama)
    with pytest.raises(ValueError, match=r"DoRA needs the base weight's norm, but model.layers.0.self_attn.q_proj has a torch.uint8"):
        tt.apply(tiny_llama, tt.DoraConfig())


def test_magnitude_starts_at_the_row_norms_and_the_model_is_unchanged(tiny_llama, token_ids):
    base = _out(tiny_llama, token_ids)
    tt.apply(tiny_llama, tt.DoraConfig(r=4))
    for _, layer in layers(tiny_llama):
        delta = layer.deltas["default"]
        torch.testing.assert_close(delta.lora_magnitude_vector, layer.weight.norm(dim=1), atol=0, rtol=0)
        assert delta.lora_magnitude_vector.requires_grad
    torch.testing.assert_close(_out(tiny_llama, token_ids), base, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fixture", ["minilm", "tiny_llama", "tiny_gpt2"])
def test_same_init_and_logits_as_peft(fixture, request, token_ids):
    model = _model(fixture, request)
    ours_targets, peft_targets = SPECS[fixture]
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=peft_targets))
    ours = tt.apply(copy.deepcopy(model), tt.DoraConfig(r=4, alpha=8, targets=ours_targets))
    magnitudes = {n: p for n, p in theirs.named_parameters() if "lora_magnitude_vector" in n}
    ours_magnitudes = {n: p for n, p in ours.named_parameters() if "lora_magnitude_vector" in n}
    assert len(magnitudes) == len(ours_magnitudes) > 0
    for theirs_m, ours_m in zip(magnitudes.values(), ours_magnitudes.values()):
        torch.testing.assert_close(ours_m, theirs_m, atol=1e-6, rtol=0)
    copy_from_peft(theirs, ours)  # random A, B and magnitude: the output moves away from the base
    assert_parity(_out(ours.eval(), token_ids), _out(theirs.eval(), token_ids), _out(model, token_ids))


def test_dropout_rescales_the_dropped_input_as_peft_does(tiny_llama, token_ids):
    ours, theirs = _pair(tiny_llama, "tiny_llama", dropout=0.3)
    ours.train(), theirs.train()
    torch.manual_seed(11)
    theirs_out = theirs(input_ids=token_ids).logits
    torch.manual_seed(11)
    ours_out = ours(input_ids=token_ids).logits
    torch.manual_seed(12)
    other_mask = ours(input_ids=token_ids).logits
    assert_parity(ours_out, theirs_out, other_mask)  # same dropout mask: same output; another mask differs


def test_training_losses_match_peft(tiny_llama):
    ours, theirs = _pair(tiny_llama, "tiny_llama")
    torch.manual_seed(5)
    batches = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (4, 2, 8))]
    losses = []
    for model in (ours, theirs):
        params = [p for p in model.parameters() if p.requires_grad]
        assert len(params) == 3 * 4  # A, B and the magnitude on 2 layers x (q, v)
        losses.append(adamw_losses(model, batches, lr=1e-2))
    assert losses[0][0] != losses[0][-1]  # it trains
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_merge_gives_peft_merged_weights_and_unmerge_restores(fixture, request, token_ids):
    model = _model(fixture, request)
    ours, theirs = _pair(model, fixture)
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    live = _out(ours, token_ids)
    tt.merge(ours)
    assert_parity(_out(ours, token_ids), live, _out(model, token_ids))
    merged = theirs.merge_and_unload().state_dict()
    ours_state = ours.state_dict()
    for key, weight in merged.items():  # ours keeps the base's keys; peft's merged model has them too
        torch.testing.assert_close(ours_state[key], weight, atol=1e-6, rtol=0)
    tt.unmerge(ours)
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param, before[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(_out(ours, token_ids), live, atol=1e-6, rtol=0)


def test_merging_into_a_pruned_layer_keeping_sparsity_is_refused(tiny_llama):
    tt.apply(tiny_llama, tt.DoraConfig(r=4, targets=["q_proj"]))
    _, layer = next(layers(tiny_llama))
    layer.set_mask((torch.rand_like(layer.weight) > 0.5).float())
    with pytest.raises(ValueError, match="keep_sparsity=False"):
        tt.merge(tiny_llama)


@pytest.mark.parametrize("fixture", ["minilm", "tiny_llama", "tiny_gpt2"])
def test_trimtune_writes_peft_reads(fixture, request, token_ids, tmp_path):
    model = _model(fixture, request)
    ours, _ = _pair(model, fixture)
    tt.save_adapter(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["use_dora"] is True
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert sum(k.endswith(".lora_magnitude_vector") for k in keys) == len(list(layers(ours)))
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path).eval()
    assert_parity(_out(loaded, token_ids), _out(ours, token_ids), _out(model, token_ids))


@pytest.mark.parametrize("fixture", ["minilm", "tiny_llama", "tiny_gpt2"])
def test_peft_writes_trimtune_reads(fixture, request, token_ids, tmp_path):
    model = _model(fixture, request)
    _, theirs = _pair(model, fixture)  # randomised by the copy
    theirs.save_pretrained(tmp_path)
    ours = copy.deepcopy(model)
    config = tt.load_adapter(ours, tmp_path)
    assert type(config) is tt.DoraConfig and config.r == 4 and config.alpha == 8
    assert_parity(_out(ours, token_ids), _out(theirs.eval(), token_ids), _out(model, token_ids))


def test_use_dora_picks_dora_and_plain_files_stay_lora(tiny_llama, tmp_path):
    tt.apply(tiny_llama, tt.LoraConfig(r=4), name="plain")
    tt.apply(tiny_llama, tt.DoraConfig(r=4), name="dora")
    tt.save_adapter(tiny_llama, tmp_path / "plain", name="plain")
    tt.save_adapter(tiny_llama, tmp_path / "dora", name="dora")
    fresh = copy.deepcopy(tiny_llama)
    for name in ("plain", "dora"):
        tt.delete_adapter(fresh, name)
    assert type(tt.load_adapter(fresh, tmp_path / "plain", name="a")) is tt.LoraConfig
    assert type(tt.load_adapter(fresh, tmp_path / "dora", name="b")) is tt.DoraConfig


def test_recipe_method_type_dora_builds_a_dora_config():
    from trimtune.recipes.load import validate

    recipe = validate({"model": {"path": "minilm"}, "data": {"train": "demo"},
                       "method": {"type": "dora", "r": 4, "alpha": 8, "targets": "query|value"}})
    config = recipe.method.build()
    assert type(config) is tt.DoraConfig and config.r == 4


def test_shrink_refuses_a_dora_layer_before_cutting_anything(tiny_llama):
    from trimtune.shrinking import shrink

    tt.apply(tiny_llama, tt.DoraConfig(r=4, targets="all-linear"))
    before = {n: p.shape for n, p in tiny_llama.named_parameters()}
    with pytest.raises(ValueError, match=r"carries adapter 'default' \(DoraDelta\), which cannot be sliced"):
        shrink(tiny_llama, 0.5, example_inputs={"input_ids": torch.randint(3, 100, (2, 10))})
    assert {n: p.shape for n, p in tiny_llama.named_parameters()} == before


def _tiny_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3), torch.nn.Flatten(), torch.nn.Linear(6 * 6 * 6, 10)
    ).eval()


def test_conv2d_matches_peft_in_logits_merge_and_files(tmp_path):
    images = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    theirs = peft.get_peft_model(_tiny_cnn(), peft.LoraConfig(r=2, lora_alpha=4, use_dora=True, target_modules=["0", "2", "4"]))
    ours = tt.apply(_tiny_cnn(), tt.DoraConfig(r=2, alpha=4, targets=["0", "2", "4"]))
    for theirs_m, ours_m in zip(*[[p for n, p in m.named_parameters() if "magnitude" in n] for m in (theirs, ours)]):
        torch.testing.assert_close(ours_m, theirs_m, atol=1e-6, rtol=0)  # conv: norms over (in, kh, kw)
    copy_from_peft(theirs, ours)
    with torch.no_grad():
        live, base = ours(images), _tiny_cnn()(images)
        assert_parity(live, theirs.eval()(images), base)
        tt.save_adapter(ours, tmp_path / "ours")
        theirs.save_pretrained(tmp_path / "theirs")
        assert_parity(peft.PeftModel.from_pretrained(_tiny_cnn(), tmp_path / "ours").eval()(images), live, base)
        fresh = _tiny_cnn()
        tt.load_adapter(fresh, tmp_path / "theirs")
        assert_parity(fresh(images), live, base)
        tt.merge(ours)
        assert_parity(ours(images), live, base)
        ours_state = ours.state_dict()
        for key, weight in theirs.merge_and_unload().state_dict().items():
            torch.testing.assert_close(ours_state[key], weight, atol=1e-6, rtol=0)


def test_conv2d_dropout_matches_peft():
    images = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    theirs = peft.get_peft_model(_tiny_cnn(), peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.3, use_dora=True,
                                                              target_modules=["0", "2"]))
    ours = tt.apply(_tiny_cnn(), tt.DoraConfig(r=2, alpha=4, dropout=0.3, targets=["0", "2"]))
    copy_from_peft(theirs, ours)
    ours.train(), theirs.train()
    outputs = []
    for model, seed in ((theirs, 11), (ours, 11), (ours, 12)):
        torch.manual_seed(seed)
        with torch.no_grad():
            outputs.append(model(images))
    assert_parity(outputs[1], outputs[0], outputs[2])
