"""The typed method contract: a method is a small class checked when it registers; its training
behaviour rides on the model (diff's penalty: tt.train and `trimtune tune` alike); the facade names
every config; one-shot LLM pruning has a library entry point."""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import trimtune as tt
from trimtune.core.delta import Delta
from trimtune.core.registry import METHODS
from trimtune.recipes.schema import Recipe


@dataclass
class ToyConfig:
    targets: object = None


class ToyDelta(Delta):
    def __init__(self, kind, width: int):
        super().__init__(kind)
        self.shift = nn.Parameter(torch.zeros(width))

    def add_output(self, y, x):
        return y + self.shift


@pytest.fixture
def registry_restored():
    before = dict(METHODS)
    yield
    METHODS.clear()
    METHODS.update(before)


def test_a_complete_method_registers_and_applies(registry_restored):
    @tt.register
    class Toy(tt.WeightDeltaMethod):
        name = "toy"
        config = ToyConfig

        def make_delta(self, layer, config):
            return ToyDelta(layer.kind, layer.kind.weight_shape(layer.weight)[0])

    model = nn.Sequential(nn.Linear(4, 3))
    tt.apply(model, ToyConfig(targets="0"))
    assert tt.method_for_config(tt.adapter_config(model)).name == "toy"
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["0.deltas.default.shift"]


def test_a_method_missing_its_delta_fails_when_it_registers(registry_restored):
    with pytest.raises(TypeError, match=r"method class NoDelta .* does not implement make_delta, which a WeightDeltaMethod must give"):
        @tt.register
        class NoDelta(tt.WeightDeltaMethod):
            name = "no-delta"
            config = ToyConfig
    assert "no-delta" not in tt.registered_methods()


def test_a_model_level_method_must_give_apply(registry_restored):
    with pytest.raises(TypeError, match="does not implement apply, which a Method must give"):
        @tt.register
        class NoApply(tt.Method):
            name = "no-apply"
            config = ToyConfig


@pytest.mark.parametrize("attributes, message", [
    ({"config": ToyConfig}, r"must set name = '...'"),
    ({"name": "toy"}, "must set config to its config dataclass"),
    ({"name": "toy", "config": dict}, "must set config to its config dataclass"),
    ({"name": "toy", "config": ToyConfig, "peft_type": "TOY"}, "ToyConfig must give to_peft_dict and from_peft_dict"),
])
def test_a_method_missing_a_required_part_is_refused_naming_it(registry_restored, attributes, message):
    cls = types.new_class("Incomplete", (tt.WeightDeltaMethod,), exec_body=lambda ns: ns.update(
        attributes, make_delta=lambda self, layer, config: None))
    with pytest.raises(TypeError, match=message):
        tt.register(cls)


def test_a_name_is_registered_once(registry_restored):
    with pytest.raises(ValueError, match="a method named 'lora' is already registered"):
        @tt.register
        class OtherLora(tt.WeightDeltaMethod):
            name = "lora"
            config = ToyConfig

            def make_delta(self, layer, config):
                return None


def test_the_facade_names_every_method_config():
    public = {n for n, v in vars(tt).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert set(tt.__all__) == public  # nothing exported by accident, nothing listed that is missing
    for name, method in tt.registered_methods().items():
        assert getattr(tt, method.config.__name__) is method.config, name
    assert {"DoraConfig", "VeraConfig"} <= set(tt.__all__)


def _two_linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def _data():
    torch.manual_seed(1)
    x = torch.randn(32, 8)
    return [(x[i:i + 8], (x[i:i + 8].sum(1) > 0).long()) for i in range(0, 32, 8)]


def _trained(penalty_weight: float, callbacks=()) -> dict:
    model = _two_linear()
    tt.apply(model, tt.DiffConfig(density=0.1, penalty="l1", penalty_weight=penalty_weight, targets=["0", "2"]))
    torch.manual_seed(2)
    tt.train(model, _data(), epochs=2, lr=1e-2, loss_fn=nn.functional.cross_entropy, callbacks=callbacks, progress=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_tt_train_applies_diffs_penalty_from_its_config():
    """The penalty rides on the model: the same weights as the explicit callback a recipe run used to add."""
    riding = _trained(1e-2)
    explicit = _trained(0.0, callbacks=[tt.DiffPenalty(1e-2)])
    without = _trained(0.0)
    assert riding.keys() == explicit.keys()
    for key in riding:
        torch.testing.assert_close(riding[key], explicit[key], rtol=0, atol=1e-7)
    assert any(not torch.allclose(riding[k], without[k]) for k in riding)  # the penalty did change the training


def test_a_penalty_weight_without_a_penalty_is_refused():
    with pytest.raises(tt.ConfigError, match="penalty_weight=0.1 weighs a sparsity loss, but penalty='none'"):
        tt.DiffConfig(penalty="none", penalty_weight=0.1)
    with pytest.raises(tt.ConfigError, match="penalty_weight must be a finite number >= 0"):
        tt.DiffConfig(penalty_weight=-1.0)


def _recipe(method: dict, train: dict) -> dict:
    return {"model": {"path": "lenet", "task": "image-classification"}, "data": {"train": "digits"}, "method": method, "train": train}


def test_recipes_with_the_old_train_diff_penalty_still_work():
    recipe = Recipe.model_validate(_recipe({"type": "diff", "targets": "all-linear"}, {"diff_penalty": 1e-6}))
    assert recipe.method.build().penalty_weight == 1e-6
    assert "diff_penalty" not in recipe.model_dump()["train"]
    # every resolved recipe.yaml of an older run records train.diff_penalty: 0.0, whatever its method
    assert Recipe.model_validate(_recipe({"type": "lora", "targets": "fc1"}, {"diff_penalty": 0.0})).method.type == "lora"


@pytest.mark.parametrize("method, train, message", [
    ({"type": "lora", "targets": "fc1"}, {"diff_penalty": 1e-6}, "train.diff_penalty .* is now method.penalty_weight"),
    ({"type": "diff", "penalty_weight": 1e-5}, {"diff_penalty": 1e-6}, "keep only method.penalty_weight"),
])
def test_an_old_diff_penalty_that_cannot_move_names_the_new_field(method, train, message):
    with pytest.raises(ValueError, match=message):
        Recipe.model_validate(_recipe(method, train))


def test_prune_llm_checks_the_output_before_making_the_calibration(tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "out"
    model_dir.mkdir()
    out.mkdir()
    made = []
    with pytest.raises(FileExistsError, match="already exists"):
        tt.prune_llm(model_dir, out, tt.SequentialConfig("wanda", 0.5), calibration=lambda: made.append(1))
    assert made == []


def test_prune_llm_asks_for_calibration_only_when_the_method_needs_it(tmp_path):
    with pytest.raises(ValueError, match="method 'sparsegpt' calibrates on the model's activations"):
        tt.prune_llm(tmp_path / "model", tmp_path / "out", tt.SequentialConfig("sparsegpt", 0.5))


def test_head_pruning_and_shrinking_count_the_same_heads(tiny_llama):
    from trimtune.core.attention_heads import attention_heads
    from trimtune.prune.heads import attention_blocks
    from trimtune.shrinking.transformer_groups import layer_widths

    counted = attention_heads(copy.deepcopy(tiny_llama))
    assert [(b.heads, b.kv_heads) for b in attention_blocks(tiny_llama)] == [(b.heads, b.kv_heads) for b in counted]
    assert layer_widths(tiny_llama) == [{"heads": b.heads, "head_dim": b.head_dim} for b in counted]
    config = tiny_llama.config
    assert counted[0].heads == config.num_attention_heads and counted[0].kv_heads == config.num_key_value_heads
