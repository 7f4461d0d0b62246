"""The base-model fingerprint: same base passes (even cast), other bases fail with the reason."""

from __future__ import annotations

import copy

import pytest
import torch

import trimtune as tt
from trimtune.core.io.fingerprint import check_fingerprint, fingerprint


def _llama(hidden=32, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def test_adapters_and_trained_biases_do_not_change_the_fingerprint(tiny_bert):
    before = fingerprint(tiny_bert)
    tt.apply(tiny_bert, tt.LoraConfig(r=2, targets="query|value", bias="all", modules_to_save=["classifier"]))
    with torch.no_grad():
        for param in tiny_bert.parameters():
            if param.requires_grad:  # LoRA factors, the head copy, every bias
                param.add_(1.0)
    assert fingerprint(tiny_bert) == before
    assert before["architecture"] == "BertForSequenceClassification" and before["model_type"] == "bert"
    assert len(before["samples"]) > 0


def test_same_base_passes_even_after_a_cast_to_bf16(tiny_llama):
    saved = fingerprint(tiny_llama)
    check_fingerprint(saved, copy.deepcopy(tiny_llama))
    check_fingerprint(saved, copy.deepcopy(tiny_llama).to(torch.bfloat16))


def test_other_seed_other_size_other_architecture_fail_with_the_reason(tiny_llama, tiny_gpt2):
    saved = fingerprint(tiny_llama)
    with pytest.raises(tt.BaseMismatchError, match="other weights: .*check_base=False"):
        check_fingerprint(saved, _llama(seed=1))
    with pytest.raises(tt.BaseMismatchError, match="other parameter names or shapes"):
        check_fingerprint(saved, _llama(hidden=48))
    with pytest.raises(tt.BaseMismatchError, match="architecture 'LlamaForCausalLM', but the model's is 'GPT2LMHeadModel'"):
        check_fingerprint(saved, tiny_gpt2)


def test_one_changed_weight_matrix_is_noticed(tiny_llama):
    saved = fingerprint(tiny_llama)
    name = saved["samples"][-1][0]
    with torch.no_grad():
        tiny_llama.get_parameter(name).mul_(1.5)
    with pytest.raises(tt.BaseMismatchError, match=name.replace(".", r"\.")):
        check_fingerprint(saved, tiny_llama)


def test_merged_adapters_are_refused_not_misread(tiny_llama):
    tt.apply(tiny_llama, tt.LoraConfig(r=2))
    tt.merge(tiny_llama)
    with pytest.raises(ValueError, match="merged into the base weights.*unmerge"):
        fingerprint(tiny_llama)
    tt.unmerge(tiny_llama)
    fingerprint(tiny_llama)


def test_load_adapter_onto_the_wrong_base_and_the_override(tiny_llama, tmp_path, token_ids):
    tt.apply(tiny_llama, tt.LoraConfig(r=2))
    with torch.no_grad():
        for param in tt.core.state.layers(tiny_llama).__next__()[1].deltas.parameters():
            param.normal_()
    tt.save_adapter(tiny_llama, tmp_path)
    other = _llama(seed=1)
    with pytest.raises(tt.BaseMismatchError, match="other weights"):
        tt.load_adapter(other, tmp_path)
    assert tt.core.state.state_of(other).adapters == {}
    tt.load_adapter(other, tmp_path, check_base=False)
    layer = dict(tt.core.state.layers(other))["model.layers.0.self_attn.q_proj"]
    source = dict(tt.core.state.layers(tiny_llama))["model.layers.0.self_attn.q_proj"]
    torch.testing.assert_close(layer.deltas["default"].lora_B, source.deltas["default"].lora_B, atol=0, rtol=0)


def test_an_adapter_trained_on_a_pruned_base_needs_the_same_masks(tiny_llama, tmp_path):
    fresh = copy.deepcopy(tiny_llama)
    tt.apply(tiny_llama, tt.LoraConfig(r=2))
    layer = dict(tt.core.state.layers(tiny_llama))["model.layers.0.self_attn.q_proj"]
    mask = (torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    layer.set_mask(mask)
    tt.save_adapter(tiny_llama, tmp_path)
    with pytest.raises(tt.BaseMismatchError, match="made for a pruned base, but this model has no pruning masks"):
        tt.load_adapter(fresh, tmp_path)
    fresh_layer = tt.core.state.wrap(fresh, "model.layers.0.self_attn.q_proj")
    fresh_layer.set_mask(1 - mask)
    with pytest.raises(tt.BaseMismatchError, match="pruned with other masks than this model"):
        tt.load_adapter(fresh, tmp_path)
    fresh_layer.set_mask(mask)
    tt.load_adapter(fresh, tmp_path)
    assert fingerprint(fresh) == fingerprint(tiny_llama)
