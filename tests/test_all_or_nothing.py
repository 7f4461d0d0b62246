"""Model-changing verbs validate first or roll back: after a refusal the model's state dict, module
types and trainable flags are as before. New modules join in the mode of the model (eval stays eval)."""

import copy

import pytest
import torch
from torch import nn

import trimtune as tt
from trimtune.prune import PruneConfig, prune


def snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m)) for n, m in model.named_modules()],
            {n: p.requires_grad for n, p in model.named_parameters()})


def assert_unchanged(model, before):
    state, types, flags = snapshot(model)
    assert types == before[1] and flags == before[2]
    assert state.keys() == before[0].keys() and all(torch.equal(state[k], before[0][k]) for k in state)


def test_n_m_pruning_checks_every_layer_before_masking_any():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))  # the last input: 6, not 4k
    before = snapshot(net)
    with pytest.raises(tt.ConfigError, match="not divisible by M=4"):
        prune(net, PruneConfig(granularity="2:4"))
    assert_unchanged(net, before)


def test_a_prune_that_would_empty_a_layer_leaves_no_wrapper():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    before = snapshot(net)
    with pytest.raises(ValueError, match="every unit"):
        prune(net, PruneConfig(amount=1.0, granularity="out"))
    assert_unchanged(net, before)


def test_apply_on_a_merged_model_is_refused_before_anything_is_added(tiny_llama):
    tt.apply(tiny_llama, tt.LoraConfig(r=4))
    tt.merge(tiny_llama)
    before = snapshot(tiny_llama)
    with pytest.raises(ValueError, match="unmerge"):
        tt.apply(tiny_llama, tt.LoraConfig(r=2), name="second")
    assert_unchanged(tiny_llama, before)
    assert list(tt.core.state.state_of(tiny_llama).adapters) == ["default"]
    tt.unmerge(tiny_llama)
    tt.apply(tiny_llama, tt.LoraConfig(r=2), name="second")  # the name was never taken


def test_load_sparse_into_a_model_that_does_not_fit_changes_nothing(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    prune(net, PruneConfig(amount=0.5))
    tt.save_sparse(net, tmp_path / "pruned.safetensors")
    other = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 5))  # the second layer differs
    before = snapshot(other)
    with pytest.raises(ValueError, match="layer 2 is \\(4, 8\\) in the file but \\(5, 8\\)"):
        tt.load_sparse(other, tmp_path / "pruned.safetensors")
    assert_unchanged(other, before)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="broken.safetensors is not a readable sparse file"):
        tt.load_sparse(other, tmp_path / "broken.safetensors")


@pytest.mark.parametrize("how", ["apply", "load_adapter"])
def test_new_adapters_on_a_model_in_eval_mode_are_deterministic(tiny_llama, token_ids, tmp_path, how):
    config = tt.LoraConfig(r=4, dropout=0.3, init="gaussian")
    if how == "load_adapter":
        trained = tt.apply(copy.deepcopy(tiny_llama), config)
        with torch.no_grad():
            for p in trained.parameters():
                if p.requires_grad:
                    p.normal_()
        tt.save_adapter(trained, tmp_path / "a")
        tt.load_adapter(tiny_llama.eval(), tmp_path / "a")
    else:
        with torch.no_grad():
            tt.apply(tiny_llama.eval(), config)
            for p in tiny_llama.parameters():
                if p.requires_grad:
                    p.normal_()
    assert not any(m.training for m in tiny_llama.modules())
    with torch.no_grad():
        assert torch.equal(tiny_llama(token_ids).logits, tiny_llama(token_ids).logits)  # no dropout in eval
    tiny_llama.train()
    assert all(m.training for m in tiny_llama.modules())  # and train() still reaches them


def test_load_shrunk_returns_the_model_in_eval_mode(tiny_llama, tmp_path):
    tt.shrink(tiny_llama, 0.5, structures=("ffn",))
    tt.save_shrunk(tiny_llama, tmp_path / "s")
    assert not tt.load_shrunk(tmp_path / "s").training  # as from_pretrained returns it


def test_a_shrunk_model_with_adapters_saves_and_reloads_whole(tiny_llama, token_ids, tmp_path):
    tt.apply(tiny_llama, tt.LoraConfig(r=4, init="gaussian"))
    tt.apply(tiny_llama, tt.IA3Config(), name="ia3", activate=False)
    with torch.no_grad():
        for p in tiny_llama.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    tt.shrink(tiny_llama, 0.5, structures=("heads", "ffn"))  # the adapter is sliced with the base
    tt.save_shrunk(tiny_llama, tmp_path / "small")
    reloaded = tt.load_shrunk(tmp_path / "small")
    assert tt.active_adapters(reloaded) == ["default"] and list(tt.core.state.state_of(reloaded).adapters) == ["default", "ia3"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(token_ids).logits, tiny_llama.eval()(token_ids).logits)
    assert (tmp_path / "small" / "adapters" / "default" / "adapter_config.json").is_file()  # PEFT format, new shapes
