"""LoRA on bare parameters (``LoraConfig.target_parameters``, peft's field): a tiny random Mixtral's experts,
stored by transformers as 3-D tensors, against peft's ``ParamWrapper`` on the same model and tensors."""

import copy
import json
import re

import peft
import pytest
import torch
from _peft_parity import assert_parity, copy_from_peft, logits, peft_to_ours_key
from _training_helpers import adamw_losses
from torch import nn

import trimtune as tt
from trimtune.core.parameter_host import ParameterHost

EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]


def _peft_key_map(order, owners):
    """peft nests one wrapper per targeted parameter, the last registered outermost: the number of
    ``base_layer`` levels in a key says which parameter it belongs to (``order``: registration order).
    Keys of other modules (``owners``: the modules holding targeted parameters) are a layer's."""

    def key_map(key, adapter="default"):
        match = re.match(rf"base_model\.model\.(.*?)((?:\.base_layer)*)\.(lora_[AB])\.{adapter}\.weight$", key)
        if match is None or match.group(1) not in owners:
            return peft_to_ours_key(key, adapter)
        depth = match.group(2).count(".base_layer")
        return f"{match.group(1)}.deltas.{adapter}.{order[len(order) - 1 - depth]}.{match.group(3)}"

    return key_map


def _pair(model, targets=(), parameters=EXPERTS, order=("gate_up_proj", "down_proj"), **kwargs):
    """trimtune's and peft's LoRA on copies of ``model``, peft's random factors copied into ours."""
    ours = tt.apply(copy.deepcopy(model), tt.LoraConfig(r=2, alpha=4, targets=list(targets), target_parameters=parameters, **kwargs))
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=list(targets), target_parameters=parameters, **_peft_fields(kwargs)))
    owners = {n for n, m in ours.named_modules() if isinstance(m, ParameterHost)}
    copy_from_peft(theirs, ours, key_map=_peft_key_map(order, owners))
    return ours, theirs


def _peft_fields(kwargs):
    names = {"use_rslora": "use_rslora", "rank_pattern": "rank_pattern", "alpha_pattern": "alpha_pattern"}
    return {names[k]: v for k, v in kwargs.items()}


def test_starts_unchanged_keeps_base_keys_and_trains_only_the_factors(tiny_mixtral, token_ids):
    model = copy.deepcopy(tiny_mixtral)
    keys = set(model.state_dict())
    tt.apply(model, tt.LoraConfig(r=2, targets=[], target_parameters=EXPERTS))
    torch.testing.assert_close(logits(model, token_ids), logits(tiny_mixtral, token_ids), atol=0, rtol=0)  # B starts at 0
    assert keys <= set(model.state_dict())  # the experts' 3-D weights keep their keys
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 * 2 and all(re.search(r"experts\.deltas\.default\.\w+\.lora_[AB]$", n) for n in trainable)
    delta = model.model.layers[0].mlp.experts.deltas["default"]["gate_up_proj"]
    assert (delta.lora_A.shape, delta.lora_B.shape) == ((2 * 4, 16), (32, 2 * 4))  # peft's shapes: r·experts


@pytest.mark.parametrize("targets, kwargs", [((), {}), (("q_proj",), {"use_rslora": True, "rank_pattern": {"down_proj": 3}})])
def test_logits_match_peft(tiny_mixtral, token_ids, targets, kwargs):
    ours, theirs = _pair(tiny_mixtral, targets, **kwargs)
    rank = kwargs.get("rank_pattern", {}).get("down_proj", 2)  # a pattern matches the parameter's name, as in peft
    assert ours.model.layers[1].mlp.experts.deltas["default"]["down_proj"].lora_A.shape == (rank * 4, 16)
    assert_parity(logits(ours, token_ids), logits(theirs, token_ids), logits(tiny_mixtral, token_ids))


def test_qwen2_moe_experts_beside_its_shared_expert_match_peft(tiny_qwen2_moe, token_ids):
    ours, theirs = _pair(tiny_qwen2_moe, targets=("shared_expert.down_proj",))
    assert_parity(logits(ours, token_ids), logits(theirs, token_ids), logits(tiny_qwen2_moe, token_ids))


def test_one_parameter_of_two_and_a_full_name(tiny_mixtral, token_ids):
    ours, theirs = _pair(tiny_mixtral, parameters=["model.layers.1.mlp.experts.down_proj"], order=("down_proj",))
    assert [n for n, m in ours.named_modules() if isinstance(m, ParameterHost)] == ["model.layers.1.mlp.experts"]
    assert_parity(logits(ours, token_ids), logits(theirs, token_ids), logits(tiny_mixtral, token_ids))


class _Experts(nn.Module):
    """Experts stored (experts, in, out), flagged ``is_transposed`` as transformers' gpt-oss experts are,
    beside a 2-D (out, in) weight: both layouts peft's ParamWrapper knows."""

    def __init__(self):
        super().__init__()
        self.is_transposed = True
        self.up = nn.Parameter(torch.randn(3, 6, 10))
        self.mix = nn.Parameter(torch.randn(6, 10))
        self.out = nn.Linear(6, 4)

    def forward(self, x):
        return self.out(torch.einsum("bi,eio->bo", x, self.up) @ self.mix.T)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.experts = _Experts()

    def forward(self, x):
        return self.experts(x)


def test_transposed_experts_and_a_2d_weight_match_peft_and_merge():
    model, x = _Net(), torch.randn(4, 6)
    ours, theirs = _pair(model, parameters=["experts.up", "experts.mix"], order=("up", "mix"))
    with torch.no_grad():
        live = ours(x)
        assert_parity(live, theirs(x), model(x))
        tt.merge(ours)
        torch.testing.assert_close(ours(x), live, atol=1e-5, rtol=0)
        theirs.merge_adapter()
        torch.testing.assert_close(ours.experts.up, theirs.base_model.model.experts.base_layer.base_layer.up, atol=1e-6, rtol=0)


def test_a_layer_inside_the_module_wrapped_later_is_the_one_the_module_runs():
    model, x = _Net(), torch.randn(4, 6)
    tt.apply(model, tt.LoraConfig(r=2, targets=[], target_parameters=["experts.up"]), "params")
    tt.apply(model, tt.LoraConfig(r=2, targets=["experts.out"]), "layer")  # wraps a child of the host
    model.experts.out.deltas["layer"].lora_B.data.normal_()
    with torch.no_grad():
        with tt.disable_adapters(model):
            base = model(x)
        tt.set_adapter(model, "layer")
        assert (model(x) - base).abs().max() > 1e-3


def test_files_both_ways_with_peft(tiny_mixtral, token_ids, tmp_path):
    ours, theirs = _pair(tiny_mixtral)
    live, base = logits(ours, token_ids), logits(tiny_mixtral, token_ids)
    tt.save_adapter(ours, tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert (saved["target_parameters"], saved["target_modules"]) == (EXPERTS, [])
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(tiny_mixtral), tmp_path / "ours").eval()
    assert_parity(logits(loaded, token_ids), live, base)
    theirs.save_pretrained(tmp_path / "theirs")
    fresh = copy.deepcopy(tiny_mixtral)
    config = tt.load_adapter(fresh, tmp_path / "theirs")
    assert sorted(config.target_parameters) == sorted(EXPERTS) and config.targets == []
    assert_parity(logits(fresh, token_ids), live, base)


def test_merge_unmerge_and_unload(tiny_mixtral, token_ids, tmp_path):
    ours, _ = _pair(tiny_mixtral)
    experts = ours.model.layers[0].mlp.experts
    before, live = experts.gate_up_proj.detach().clone(), logits(ours, token_ids)
    tt.merge(ours)
    assert not torch.equal(experts.gate_up_proj, before)
    torch.testing.assert_close(logits(ours, token_ids), live, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="merged"):
        tt.delete_adapter(ours, "default")
    with pytest.raises(ValueError, match="merged into the base weights"):  # its fingerprint would be of the merged base
        tt.save_adapter(ours, tmp_path / "merged")
    tt.unmerge(ours)
    torch.testing.assert_close(experts.gate_up_proj, before, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(ours, token_ids), live, atol=1e-6, rtol=0)
    plain = tt.unload(copy.deepcopy(ours), merge_adapters=True)
    assert type(plain.model.layers[0].mlp.experts).__name__ == "MixtralExperts"
    torch.testing.assert_close(logits(plain, token_ids), live, atol=1e-5, rtol=0)
    restored = tt.unload(ours)
    assert set(restored.state_dict()) == set(tiny_mixtral.state_dict())
    torch.testing.assert_close(logits(restored, token_ids), logits(tiny_mixtral, token_ids), atol=1e-6, rtol=0)


def test_training_losses_match_peft(tiny_mixtral):
    ours, theirs = _pair(tiny_mixtral, targets=("q_proj",))
    torch.manual_seed(3)
    batches = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (4, 2, 8))]
    losses = [adamw_losses(m, batches, lr=1e-2, seed=7) for m in (ours, theirs)]
    assert losses[0][0] != losses[0][-1]  # it trains
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)


def test_two_adapters_switch_and_disable(tiny_mixtral, token_ids):
    model = copy.deepcopy(tiny_mixtral)
    tt.apply(model, tt.LoraConfig(r=2, targets=[], target_parameters=EXPERTS, init="gaussian"), "a")
    tt.apply(model, tt.LoraConfig(r=2, targets=[], target_parameters=["experts.down_proj"], init="gaussian"), "b")
    for _, p in model.named_parameters():
        if ".lora_B" in _:
            p.data.normal_()
    tt.set_adapter(model, "a")
    a = logits(model, token_ids)
    tt.set_adapter(model, "b")
    b = logits(model, token_ids)
    with tt.disable_adapters(model):
        torch.testing.assert_close(logits(model, token_ids), logits(tiny_mixtral, token_ids), atol=0, rtol=0)
    assert not torch.allclose(a, b)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        f"model.layers.{i}.mlp.experts.deltas.b.down_proj.lora_{f}" for i in (0, 1) for f in "AB"]


@pytest.mark.parametrize("kwargs, message", [
    ({"target_parameters": ["experts.gate_proj"]}, r"target_parameters entry 'experts.gate_proj' matches no parameter.*experts.gate_up_proj"),
    ({"target_parameters": ["mlp.experts"]}, r"'mlp.experts' names a module .*not a parameter.*experts.gate_up_proj"),
    ({"target_parameters": ["rotary_emb.inv_freq"]}, r"names a buffer"),
    ({"target_parameters": ["input_layernorm.weight"]}, r"input_layernorm.weight of shape \(16,\).*allowed: .*2 dimensions"),
    ({"target_parameters": ["q_proj.weight"], "targets": ["q_proj"]}, r"q_proj.*selects as a layer too"),
])
def test_naming_a_non_parameter_is_refused_and_the_model_is_unchanged(tiny_mixtral, token_ids, kwargs, message):
    model = copy.deepcopy(tiny_mixtral)
    kwargs = {"targets": [], **kwargs}
    types = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(tt.ConfigError, match=message):
        tt.apply(model, tt.LoraConfig(r=2, **kwargs))
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert set(model.state_dict()) == set(tiny_mixtral.state_dict()) and not tt.adapter_configs(model)


@pytest.mark.parametrize("kwargs, message", [
    ({"target_parameters": "experts.gate_up_proj"}, r"target_parameters must be a list of parameter names.*got 'experts.gate_up_proj'"),
    ({"target_parameters": [""]}, r"target_parameters must be a list"),
    ({"target_parameters": EXPERTS, "dropout": 0.1}, r"dropout must be 0 with target_parameters.*got 0.1"),
    ({"target_parameters": EXPERTS, "follow_mask": True}, r"follow_mask=True is not available with target_parameters"),
    ({"target_parameters": EXPERTS, "init": "pissa"}, r"init='pissa' is not available with target_parameters"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.LoraConfig(**kwargs)


def test_a_method_without_parameter_deltas_refuses_them_and_leaves_the_model(tiny_mixtral):
    model = copy.deepcopy(tiny_mixtral)
    with pytest.raises(tt.ConfigError, match=r"target_parameters=.*adapts layers only"):
        tt.apply(model, tt.DoraConfig(r=2, targets=["q_proj"], target_parameters=EXPERTS))
    assert set(model.state_dict()) == set(tiny_mixtral.state_dict())


def test_a_recipe_method_section_takes_target_parameters():
    from trimtune.recipes.load import RecipeError, validate

    base = {"model": {"path": "minilm"}, "data": {"train": "demo"}}
    recipe = validate({**base, "method": {"type": "lora", "r": 4, "targets": [], "target_parameters": EXPERTS}})
    assert recipe.method.build().target_parameters == EXPERTS
    with pytest.raises(RecipeError, match=r"method.*dropout must be 0 with target_parameters"):
        validate({**base, "method": {"type": "lora", "dropout": 0.1, "target_parameters": EXPERTS}}).method.build()
