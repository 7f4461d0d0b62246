"""LoRA started from the base weight (PiSSA, its fast SVD variant, OLoRA) against peft's
``init_lora_weights``: the start (factors, residual base), training losses, and the saved file,
which is peft's ``path_initial_model_for_weight_conversion`` conversion for the untouched base."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
import types

import peft
import pytest
import torch
from safetensors.torch import load_file

import trimtune as tt
from trimtune.core.io.fingerprint import BaseMismatchError
from trimtune.core.state import layers, state_of

from _peft_parity import assert_parity
from _training_helpers import adamw_losses
import test_cli_resume
from test_cli_resume import adapter, assert_same

recipe = test_cli_resume.recipe  # the tiny-BERT LoRA run with checkpoints (a fixture)
TARGETS = {"tiny_llama": (["q_proj", "v_proj"], False), "tiny_gpt2": (["c_attn"], True)}  # (targets, fan_in_fan_out)


def _pair(base, fixture, init, r=4, alpha=8, use_rslora=False):
    targets, fan_in_fan_out = TARGETS[fixture]
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=r, lora_alpha=alpha, use_rslora=use_rslora, target_modules=targets, init_lora_weights=init,
        fan_in_fan_out=fan_in_fan_out))
    ours = tt.apply(copy.deepcopy(base), tt.LoraConfig(r=r, alpha=alpha, use_rslora=use_rslora, targets=targets, init=init))
    return ours, theirs


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _batches(ids, steps=3):
    return [{"input_ids": ids, "labels": ids}] * steps


@pytest.mark.parametrize("fixture, init", [("tiny_llama", "pissa"), ("tiny_gpt2", "pissa"), ("tiny_llama", "olora")])
def test_start_and_training_match_peft(fixture, init, request, token_ids):
    base = request.getfixturevalue(fixture)
    before = _logits(base, token_ids)
    ours, theirs = _pair(base, fixture, init)
    for name, layer in layers(ours):
        twin = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(layer.deltas["default"].lora_A, twin.lora_A["default"].weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(layer.deltas["default"].lora_B, twin.lora_B["default"].weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(layer.weight, twin.base_layer.weight, atol=1e-6, rtol=0)  # the residual
        assert (layer.weight - base.get_submodule(name).weight).abs().max() > 0.01  # the base did change
    torch.testing.assert_close(_logits(ours, token_ids), before, atol=1e-5, rtol=0)  # the start is the base model
    torch.testing.assert_close(_logits(theirs, token_ids), before, atol=1e-5, rtol=0)
    ours_losses = adamw_losses(ours, _batches(token_ids), lr=5e-2, seed=0)
    peft_losses = adamw_losses(theirs, _batches(token_ids), lr=5e-2, seed=0)
    assert ours_losses == pytest.approx(peft_losses, abs=1e-5)
    ours.eval(), theirs.eval()
    assert_parity(_logits(ours, token_ids), _logits(theirs, token_ids), before)


def test_fast_pissa_splits_the_weight_exactly_and_keeps_most_of_the_top_part(tiny_llama):
    original = {n: m.weight.detach().clone() for n, m in tiny_llama.named_modules() if n.endswith(("q_proj", "v_proj"))}
    tt.apply(tiny_llama, tt.LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj"], init="pissa_niter_4"))
    for name, layer in layers(tiny_llama):
        delta = layer.deltas["default"]
        start = delta.scale * delta.lora_B @ delta.lora_A
        torch.testing.assert_close(layer.weight + start, original[name], atol=1e-6, rtol=0)  # W_res + s·B0A0 = W
        best = torch.linalg.svdvals(original[name])[:4].square().sum().sqrt()  # the exact top-4 part's norm
        assert 0.9 * best <= torch.linalg.norm(start) <= best * (1 + 1e-5)


# (peft's OLoRA does not transpose GPT-2's Conv1D weight, so it cannot be compared there: see the next test)
@pytest.mark.parametrize("fixture, init, use_rslora", [("tiny_llama", "pissa", False), ("tiny_llama", "olora", True),
                                                       ("tiny_gpt2", "pissa", True)])
def test_saved_file_is_peft_conversion_for_the_untouched_base(fixture, init, use_rslora, request, token_ids, tmp_path):
    base = request.getfixturevalue(fixture)
    ours, theirs = _pair(base, fixture, init, use_rslora=use_rslora)
    theirs.save_pretrained(tmp_path / "peft_init")  # peft's recipe: the start first, then the trained adapter
    adamw_losses(ours, _batches(token_ids, 2), lr=5e-2, seed=0)
    adamw_losses(theirs, _batches(token_ids, 2), lr=5e-2, seed=0)
    ours.eval()
    trained = _logits(ours, token_ids)
    live = {k: v.clone() for k, v in ours.state_dict().items()}
    tt.save_adapter(ours, tmp_path / "ours")
    assert all(torch.equal(v, live[k]) for k, v in ours.state_dict().items())  # saving leaves the model bit-identical
    theirs.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "peft_init"))

    ours_config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    for field in ("r", "lora_alpha", "init_lora_weights", "use_rslora"):
        assert ours_config[field] == pytest.approx(peft_config[field]), field
    ours_tensors, peft_tensors = load_file(tmp_path / "ours" / "adapter_model.safetensors"), load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert sorted(ours_tensors) == sorted(peft_tensors)
    for key, tensor in peft_tensors.items():
        torch.testing.assert_close(ours_tensors[key], tensor, atol=1e-5, rtol=0)

    untouched = _logits(base, token_ids)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    assert_parity(_logits(loaded, token_ids), trained, untouched)  # a peft user with the original base
    reloaded = copy.deepcopy(base)
    tt.load_adapter(reloaded, tmp_path / "ours")  # and trimtune's own reload
    assert_parity(_logits(reloaded, token_ids), trained, untouched)


def test_olora_on_gpt2_conv1d_starts_at_the_model_and_saves_for_the_original_base(tiny_gpt2, token_ids, tmp_path):
    before = _logits(tiny_gpt2, token_ids)
    original = copy.deepcopy(tiny_gpt2)
    tt.apply(tiny_gpt2, tt.LoraConfig(r=4, targets=["c_attn", "c_fc"], init="olora"))
    torch.testing.assert_close(_logits(tiny_gpt2, token_ids), before, atol=1e-5, rtol=0)
    adamw_losses(tiny_gpt2, _batches(token_ids, 2), lr=5e-2, seed=0)
    tiny_gpt2.eval()
    tt.save_adapter(tiny_gpt2, tmp_path / "a")
    loaded = peft.PeftModel.from_pretrained(original, tmp_path / "a").eval()
    assert_parity(_logits(loaded, token_ids), _logits(tiny_gpt2, token_ids), before)


def test_the_file_is_refused_on_the_rewritten_base(tiny_llama, tmp_path):
    tt.apply(tiny_llama, tt.LoraConfig(r=4, targets=["q_proj", "v_proj"], init="pissa"))
    tt.save_adapter(tiny_llama, tmp_path / "a")
    with pytest.raises(BaseMismatchError, match="other weights|was changed since"):  # it would add the start twice
        tt.load_adapter(tiny_llama, tmp_path / "a", name="again")
    assert list(state_of(tiny_llama).adapters) == ["default"]


def test_saving_a_rewritten_base_adapter_from_a_sharded_model_is_refused(tiny_llama, tmp_path, monkeypatch):
    from trimtune.methods.lora import plain_lora

    tt.apply(tiny_llama, tt.LoraConfig(r=4, targets=["q_proj"], init="olora"))
    monkeypatch.setattr(plain_lora, "model_is_sharded", lambda model: True)  # FSDP itself is tested elsewhere
    with pytest.raises(ValueError, match=r"adapter 'default' \(init='olora'\) rewrote the base.*FSDP-sharded"):
        tt.save_adapter(tiny_llama, tmp_path / "a")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"init": "eva"}, r"init must be one of 'default', 'gaussian', 'pissa', 'olora', 'lora_ga', 'corda' or 'pissa_niter_K'.*got 'eva'"),
    ({"init": "pissa_niter_0"}, r"init must be one of .* got 'pissa_niter_0'"),
    ({"init": "pissa", "follow_mask": True}, r"init='pissa' rewrites the base weight, which a pruning mask would cut"),
    ({"init": "lora_ga"}, r"init='lora_ga' estimates .* init_batches must be a non-empty list of keyword dicts .* got None"),
    ({"init": "lora_ga", "init_batches": []}, r"init_batches must be a non-empty list .* got \[\]"),
    ({"init_batches": [{}]}, r"init_batches is used by init='lora_ga' and 'corda' only, but init='default'"),
    ({"init": "corda"}, r"init='corda' estimates each target's input covariance .* init_batches must be a non-empty list"),
    ({"init": "corda", "init_batches": [{}], "corda_method": "both"}, r"corda_method must be one of 'ipm', 'kpm', got 'both'"),
    ({"init": "lora_ga", "init_batches": [{}], "lora_ga_direction": "random"}, r"lora_ga_direction must be one of 'ArB2r', 'A2rBr', 'ArBr', got 'random'"),
])
def test_bad_init_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.LoraConfig(**kwargs)


def test_base_rewriting_inits_are_refused_where_they_cannot_work():
    with pytest.raises(tt.ConfigError, match=r"init must be 'default' or 'gaussian' with DoRA, got 'olora'"):
        tt.DoraConfig(init="olora")
    with pytest.raises(tt.ConfigError, match=r"init='pissa' .*QLoRA stores the base in 4 bits.*LoftQ"):
        tt.QLoraConfig(init="pissa")


@pytest.mark.parametrize("targets, tied, message", [
    (["q_proj", "embed_tokens"], False, r"init='pissa' .*model.embed_tokens is a Embedding; it works on linear layers only"),
    (["q_proj", "lm_head"], True, r"init='pissa' .*lm_head shares its weight with another module"),
])
def test_unfit_targets_are_refused_before_any_weight_changes(targets, tied, message):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=100, tie_word_embeddings=tied)).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(tt.ConfigError, match=message):
        tt.apply(model, tt.LoraConfig(r=4, targets=targets, init="pissa"))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not list(layers(model))


def test_pissa_on_a_4bit_base_is_refused_and_the_model_unchanged(tiny_llama):
    tt.quantize_base(tiny_llama, targets=["q_proj", "v_proj"])
    state = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    with pytest.raises(tt.ConfigError, match=r"init='pissa_niter_2' .*q_proj is stored in 4 bits.*LoftQ"):
        tt.apply(tiny_llama, tt.LoraConfig(r=4, targets=["q_proj", "v_proj"], init="pissa_niter_2"))
    assert all(torch.equal(v, state[k]) for k, v in tiny_llama.state_dict().items())
    assert not state_of(tiny_llama).adapters


def test_a_pissa_run_resumes_exactly_and_its_adapter_loads_on_the_untouched_base(recipe, tmp_path, token_ids):
    """`trimtune tune` with init=pissa: resuming re-applies PiSSA to the fresh base (same residual, as the run's
    fingerprint checks) and ends where the uninterrupted run does; the run's adapter is for the original base."""
    from transformers import AutoModelForSequenceClassification

    from trimtune import cli

    full, cut = tmp_path / "full", tmp_path / "cut"
    pissa = ["--set", "method.init=pissa", "--set", "train.lr=0.002", "--quiet"]
    assert cli.main(["tune", str(recipe), "--out", str(full), *pissa]) == 0
    shutil.copytree(full, cut)  # as if killed after step 2
    for step in sorted((cut / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(step)
    shutil.rmtree(cut / "adapter")
    assert cli.main(["tune", str(recipe), "--out", str(cut), "--resume", *pissa]) == 0
    assert_same(adapter(cut), adapter(full), atol=1e-6)
    assert json.loads((full / "adapter" / "adapter_config.json").read_text())["r"] == 8  # rank 2r: the conversion

    base = AutoModelForSequenceClassification.from_pretrained(recipe.parent / "bert").eval()
    untouched = _logits(base, token_ids)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), full / "adapter").eval()
    ours = copy.deepcopy(base)
    tt.load_adapter(ours, full / "adapter")
    assert_parity(_logits(ours, token_ids), _logits(theirs, token_ids), untouched)


def _same_start_losses_and_file(ours, theirs, base, ids, tmp_path, rtol):
    """A data-driven start equal to peft's (factors, residual), the base's logits at the start, the same
    losses, and the saved file giving a peft user with the untouched base the trained logits."""
    before = _logits(base, ids)
    for name, layer in layers(ours):
        peft_layer = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(layer.deltas["default"].lora_A, peft_layer.lora_A["default"].weight, atol=1e-6, rtol=rtol)
        torch.testing.assert_close(layer.deltas["default"].lora_B, peft_layer.lora_B["default"].weight, atol=1e-6, rtol=rtol)
        torch.testing.assert_close(layer.weight, peft_layer.base_layer.weight, atol=1e-6, rtol=0)
        assert (layer.weight - base.get_submodule(name).weight).abs().max() > 1e-4  # 100x the tolerance: not a zero start
    torch.testing.assert_close(_logits(ours, ids), before, atol=1e-5, rtol=0)
    assert adamw_losses(ours, _batches(ids), lr=1e-2, seed=0) == pytest.approx(
        adamw_losses(theirs, _batches(ids), lr=1e-2, seed=0), abs=1e-5)
    ours.eval()
    tt.save_adapter(ours, tmp_path / "a")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "a").eval()
    assert_parity(_logits(loaded, ids), _logits(ours, ids), before)


def _exact_svd(matrix, q, niter):  # torch.svd_lowrank's signature and (U, S, V), without its random start
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :q], s[:q], vh[:q].T


@pytest.mark.parametrize("direction, scale", [("ArB2r", "stable"), ("ArBr", "gd_scale")])
def test_lora_ga_start_training_and_file_match_peft(direction, scale, tiny_llama, token_ids, monkeypatch, tmp_path):
    """The same gradients, factors, residual and losses as peft's LoRA-GA (``preprocess_loraga``); both use
    torch.svd_lowrank, whose random start neither lets one seed per layer, so both get an exact SVD here."""
    monkeypatch.setattr(torch, "svd_lowrank", _exact_svd)
    batches = [{"input_ids": token_ids, "labels": token_ids}, {"input_ids": token_ids[:, 2:], "labels": token_ids[:, 2:]}]
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights="lora_ga",
                             lora_ga_config=peft.LoraGAConfig(direction=direction, scale=scale))
    twin = copy.deepcopy(tiny_llama)
    peft.preprocess_loraga(twin, config, lambda: [twin(**b).loss.backward() for b in batches])
    theirs = peft.get_peft_model(twin, config)
    ours = tt.apply(copy.deepcopy(tiny_llama), tt.LoraConfig(r=2, alpha=4, targets=["q_proj", "v_proj"], init="lora_ga",
                                                              init_batches=batches, lora_ga_direction=direction, lora_ga_scale=scale))
    assert not ours.training and all(p.grad is None for p in ours.parameters())  # estimation left no trace
    _same_start_losses_and_file(ours, theirs, tiny_llama, token_ids, tmp_path, rtol=1e-5)


def test_lora_ga_refuses_a_layer_narrower_than_2r_and_otherwise_starts_at_the_model(tiny_llama, token_ids):
    batches = [{"input_ids": token_ids, "labels": token_ids}]
    before = _logits(tiny_llama, token_ids)
    with pytest.raises(tt.ConfigError, match=r"init='lora_ga' .*v_proj has 16 units on its narrow side, fewer than the 24 directions"):
        tt.apply(tiny_llama, tt.LoraConfig(r=12, targets=["q_proj", "v_proj"], init="lora_ga", init_batches=batches))
    assert not list(layers(tiny_llama))
    tt.apply(tiny_llama, tt.LoraConfig(r=4, targets=["q_proj", "v_proj"], init="lora_ga", init_batches=batches))  # randomised SVD
    torch.testing.assert_close(_logits(tiny_llama, token_ids), before, atol=1e-5, rtol=0)
    assert all(layer.deltas["default"].lora_B.abs().max() > 0 for _, layer in layers(tiny_llama))


def test_a_recipe_asking_for_lora_ga_is_refused_naming_the_missing_batches():
    from trimtune.recipes import RecipeError
    from trimtune.recipes.load import validate

    with pytest.raises(RecipeError, match=r"method.init='lora_ga' estimates .* init_batches must be a non-empty list"):
        validate({"model": {"path": "minilm"}, "data": {"train": "demo"}, "method": {"type": "lora", "init": "lora_ga"}})


@pytest.mark.parametrize("method", ["ipm", "kpm"])
def test_corda_start_training_and_file_match_peft(method, tiny_llama, token_ids, tmp_path, monkeypatch):
    # peft's corda.py takes its plain record class from the `attrs` package, which this environment lacks
    # and which nothing else needs: the standard library's dataclass does the same for it
    monkeypatch.setitem(sys.modules, "attr", types.SimpleNamespace(dataclass=dataclasses.dataclass))
    from peft.tuners.lora.config import CordaConfig  # not exported at peft's top level
    from peft.tuners.lora.corda import preprocess_corda

    batches = [{"input_ids": token_ids[i:i + 1]} for i in range(2)]  # peft's covariance hook takes one sequence a call
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="corda",
                             corda_config=CordaConfig(corda_method=method))
    twin = copy.deepcopy(tiny_llama)
    preprocess_corda(twin, config, run_model=lambda: [twin(**b) for b in batches])
    theirs = peft.get_peft_model(twin, config)
    ours = tt.apply(copy.deepcopy(tiny_llama), tt.LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj"], init="corda",
                                                              init_batches=batches, corda_method=method))
    _same_start_losses_and_file(ours, theirs, tiny_llama, token_ids, tmp_path, rtol=1e-4)
