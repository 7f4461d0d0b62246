"""Hot-swap: another adapter's tensors into a loaded one, in place, compiled models included."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import trimtune as tt
from trimtune.core.state import layers

TARGETS = "q_proj|v_proj"


def _randomised(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".deltas." in name:
                param.normal_(std=0.3)
    return model


def _tuned(base, seed, **config):
    model = copy.deepcopy(base)
    tt.apply(model, tt.LoraConfig(**{"r": 4, "alpha": 8, "targets": TARGETS, **config}))
    return _randomised(model, seed)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _adapter_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if ".deltas." in k}


@pytest.fixture
def ids():
    return torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))


def test_swap_from_a_directory_gives_the_new_adapters_logits_in_the_same_parameters(tiny_llama, ids, tmp_path):
    model, other = _tuned(tiny_llama, 1), _tuned(tiny_llama, 2, alpha=16, use_rslora=True)  # another scale, folded into B
    tt.save_adapter(other, tmp_path / "other")
    params = {k: id(v) for k, v in model.named_parameters()}
    before = _logits(model, ids)
    tt.hotswap_adapter(model, tmp_path / "other")
    after = _logits(model, ids)
    torch.testing.assert_close(after, _logits(other, ids), atol=1e-5, rtol=0)
    assert (after - before).abs().max() > 0.1
    assert {k: id(v) for k, v in model.named_parameters()} == params  # nothing re-wrapped or replaced
    # what it now computes is saved faithfully: a fresh base loading it gives the same logits
    tt.save_adapter(model, tmp_path / "swapped")
    fresh = copy.deepcopy(tiny_llama)
    tt.load_adapter(fresh, tmp_path / "swapped")
    torch.testing.assert_close(_logits(fresh, ids), after, atol=1e-5, rtol=0)


def test_swap_from_a_peft_directory_and_from_tensors_in_memory(tiny_llama, ids, tmp_path):
    import peft

    theirs = peft.get_peft_model(copy.deepcopy(tiny_llama), peft.LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(5)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.3)
    theirs.save_pretrained(tmp_path / "peft")
    model = _tuned(tiny_llama, 1)
    tt.hotswap_adapter(model, tmp_path / "peft")
    torch.testing.assert_close(_logits(model, ids), _logits(theirs.eval(), ids), atol=1e-5, rtol=0)

    tt.save_adapter(_tuned(tiny_llama, 3), tmp_path / "other")
    tensors = load_file(tmp_path / "other" / "adapter_model.safetensors")
    tt.hotswap_adapter(model, tensors)  # no config: the loaded adapter's (alpha 8)
    torch.testing.assert_close(_logits(model, ids), _logits(_tuned(tiny_llama, 3), ids), atol=1e-5, rtol=0)
    tt.hotswap_adapter(model, tensors, config=tt.LoraConfig(r=4, alpha=16, targets=TARGETS))  # the same tensors at alpha 16
    torch.testing.assert_close(_logits(model, ids), _logits(_tuned(tiny_llama, 3, alpha=16), ids), atol=1e-5, rtol=0)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def _tuned_mlp(seed, alpha):
    model = _mlp()
    tt.apply(model, tt.LoraConfig(r=2, alpha=alpha, targets=["0", "2"]))
    return _randomised(model, seed)


def test_a_compiled_model_runs_the_swapped_adapter_without_recompiling(tmp_path):
    import torch._dynamo

    model, other = _tuned_mlp(1, alpha=4), _tuned_mlp(2, alpha=8)
    tt.save_adapter(other, tmp_path / "other")
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")  # dynamo's guards decide recompiles; aot_eager keeps it fast
    with torch.no_grad():
        before = compiled(x)
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        tt.hotswap_adapter(model, tmp_path / "other")  # same rank, another alpha
        after = compiled(x)
        torch.testing.assert_close(after, other(x), atol=1e-6, rtol=0)
        assert (after - before).abs().max() > 0.1
        # the check is live: changing a float the graph read (what a scale update would do) does recompile
        next(layer for _, layer in layers(model)).deltas["default"].scale = 3.0
        with pytest.raises(Exception, match="[Rr]ecompil"):
            compiled(x)
    torch._dynamo.reset()


def test_mismatches_are_refused_before_anything_changes(tiny_llama, ids, tmp_path):
    model = _tuned(tiny_llama, 1)
    state, logits = _adapter_state(model), _logits(model, ids)
    cases = [
        (_tuned(tiny_llama, 2, r=8), r"tensor .*lora_A.weight has shape \(8, 32\) but the loaded one is \(4, 32\)"),
        (_tuned(tiny_llama, 2, targets="q_proj|k_proj"), r"targets other layers \(4 tensor\(s\) missing.*same target layers"),
        (_tuned(tiny_llama, 2, dropout=0.1), r"its dropout is 0.0 but the new adapter's is 0.1"),
    ]
    for number, (other, message) in enumerate(cases):
        tt.save_adapter(other, tmp_path / str(number))
        with pytest.raises(ValueError, match=message):
            tt.hotswap_adapter(model, tmp_path / str(number))
    dora = copy.deepcopy(tiny_llama)
    tt.apply(dora, tt.DoraConfig(r=4, alpha=8, targets=TARGETS))
    tt.save_adapter(dora, tmp_path / "dora")
    with pytest.raises(ValueError, match="cannot hot-swap a dora adapter into adapter 'default', which is lora"):
        tt.hotswap_adapter(model, tmp_path / "dora")
    with pytest.raises(KeyError, match="no adapter named 'other'"):
        tt.hotswap_adapter(model, tmp_path / "0", name="other")
    after = _adapter_state(model)
    assert all(torch.equal(state[k], after[k]) for k in state)
    torch.testing.assert_close(_logits(model, ids), logits, atol=0, rtol=0)


def test_a_file_made_for_another_base_is_refused(tiny_llama, tmp_path):
    from transformers import LlamaForCausalLM

    torch.manual_seed(9)
    another = LlamaForCausalLM(tiny_llama.config).eval()  # same shapes, other weights
    tt.save_adapter(_tuned(another, 2), tmp_path / "other")
    model = _tuned(tiny_llama, 1)
    state = _adapter_state(model)
    with pytest.raises(tt.BaseMismatchError):
        tt.hotswap_adapter(model, tmp_path / "other")
    assert all(torch.equal(state[k], v) for k, v in _adapter_state(model).items())
    tt.hotswap_adapter(model, tmp_path / "other", check_base=False)  # the caller's word
    assert not all(torch.equal(state[k], v) for k, v in _adapter_state(model).items())


def test_a_merged_adapter_is_refused(tiny_llama, tmp_path):
    model, other = _tuned(tiny_llama, 1), _tuned(tiny_llama, 2)
    tt.save_adapter(other, tmp_path / "other")
    tt.merge(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"adapter 'default' is merged into the weights; unmerge\(model\) before hot-swapping"):
        tt.hotswap_adapter(model, tmp_path / "other")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("config", [tt.IA3Config(), tt.LoHaConfig(r=2, targets=TARGETS), tt.DoraConfig(r=2, targets=TARGETS)],
                         ids=lambda config: type(config).__name__)
def test_other_methods_swap_their_tensors(tiny_llama, ids, tmp_path, config):
    model, other = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    tt.apply(model, config)
    tt.apply(other, config)
    _randomised(model, 1), _randomised(other, 2)
    tt.save_adapter(other, tmp_path / "other")
    before = _logits(model, ids)
    tt.hotswap_adapter(model, tmp_path / "other")
    torch.testing.assert_close(_logits(model, ids), _logits(other, ids), atol=1e-5, rtol=0)
    assert (_logits(model, ids) - before).abs().max() > 0.05
