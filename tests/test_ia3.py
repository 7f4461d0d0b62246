import copy

import pytest
import torch
from _peft_parity import assert_parity, copy_from_peft, logits, peft_model
from _training_helpers import adamw_losses
from peft import IA3Config as PeftIA3Config

import trimtune as tt
from trimtune.core.tuned_layer import TunedLayer


def _minilm(path):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama", "tiny_gpt2", "minilm"])
def test_default_targets_match_peft_outputs(fixture, request, token_ids):
    model = _minilm(request.getfixturevalue("minilm_path")) if fixture == "minilm" else request.getfixturevalue(fixture)
    peft = peft_model(model, PeftIA3Config()).eval()
    ours = tt.apply(copy.deepcopy(model), tt.IA3Config())
    copy_from_peft(peft, ours)
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        n.removeprefix("base_model.model.").replace(".ia3_l.default", ".deltas.default.ia3_l")
        for n, p in peft.named_parameters() if p.requires_grad
    }
    assert_parity(logits(ours, token_ids), logits(peft, token_ids), logits(model, token_ids))


def test_feedforward_scales_input_and_others_output(tiny_llama):
    tt.apply(tiny_llama, tt.IA3Config())
    layer = tiny_llama.model.layers[0]
    assert layer.mlp.down_proj.deltas["default"].ia3_l.shape == (1, 64)  # input side of down_proj
    assert layer.self_attn.k_proj.deltas["default"].ia3_l.shape == (16, 1)  # GQA: 2 kv heads x 8
    assert not isinstance(layer.self_attn.q_proj, TunedLayer)
    x = torch.randn(3, 64)
    down = layer.mlp.down_proj
    with torch.no_grad():
        down.deltas["default"].ia3_l.uniform_(0.5, 1.5)
        expected = torch.nn.functional.linear(x * down.deltas["default"].ia3_l, down.weight)
    torch.testing.assert_close(down(x), expected)


def test_explicit_feedforward_and_none(tiny_bert):
    tt.apply(tiny_bert, tt.IA3Config(targets=["key", "intermediate.dense"], feedforward=[]))
    inter = tiny_bert.bert.encoder.layer[0].intermediate.dense
    assert inter.deltas["default"].ia3_l.shape == (64, 1)
    tt.apply(tiny_bert, tt.IA3Config(targets=["intermediate.dense"], feedforward=["intermediate.dense"]), "ff")
    assert inter.deltas["ff"].ia3_l.shape == (1, 32)


def test_merge_unmerge_and_disable(tiny_gpt2, token_ids):
    base_out = logits(tiny_gpt2, token_ids)
    state = {k: v.clone() for k, v in tiny_gpt2.state_dict().items()}
    tt.apply(tiny_gpt2, tt.IA3Config(init="random"))
    adapted = logits(tiny_gpt2, token_ids)
    assert (adapted - base_out).abs().max() > 1e-4
    with tt.disable_adapters(tiny_gpt2):
        torch.testing.assert_close(logits(tiny_gpt2, token_ids), base_out)
    tt.merge(tiny_gpt2)
    torch.testing.assert_close(logits(tiny_gpt2, token_ids), adapted, atol=1e-5, rtol=1e-5)
    assert not torch.equal(tiny_gpt2.transformer.h[0].attn.c_attn.weight, state["transformer.h.0.attn.c_attn.weight"])
    tt.unmerge(tiny_gpt2)
    for key, value in state.items():
        torch.testing.assert_close(tiny_gpt2.state_dict()[key], value, atol=1e-6, rtol=1e-5)
    tt.unload(tiny_gpt2)
    torch.testing.assert_close(logits(tiny_gpt2, token_ids), base_out, atol=1e-6, rtol=1e-5)


def test_merge_matches_peft_merge(tiny_bert, token_ids):
    peft = peft_model(tiny_bert, PeftIA3Config()).eval()
    ours = tt.apply(copy.deepcopy(tiny_bert), tt.IA3Config())
    copy_from_peft(peft, ours)
    merged_peft = peft.merge_and_unload()
    merged_ours = tt.unload(ours, merge_adapters=True)
    for key, value in merged_peft.state_dict().items():
        torch.testing.assert_close(merged_ours.state_dict()[key], value, atol=1e-6, rtol=1e-6)


def test_trains_only_vectors(tiny_llama, token_ids):
    tt.apply(tiny_llama, tt.IA3Config())
    trainable, total = tt.trainable_parameters(tiny_llama)
    assert trainable == 2 * (16 + 16 + 64)  # per layer: k (16), v (16), down_proj input (64)
    tiny_llama(input_ids=token_ids, labels=token_ids).loss.backward()
    grads = {n for n, p in tiny_llama.named_parameters() if p.grad is not None}
    assert grads and all(".deltas.default.ia3_l" in n for n in grads)


def test_two_ia3_adapters_multiply(tiny_bert):
    tt.apply(tiny_bert, tt.IA3Config(targets=["key"], init="random"), "a")
    tt.apply(tiny_bert, tt.IA3Config(targets=["key"], init="random"), "b")
    tt.set_adapter(tiny_bert, ["a", "b"])
    key = tiny_bert.bert.encoder.layer[0].attention.self.key
    x = torch.randn(2, 32)
    expected = torch.nn.functional.linear(x, key.weight, key.bias)
    expected = expected * key.deltas["a"].ia3_l.flatten() * key.deltas["b"].ia3_l.flatten()
    torch.testing.assert_close(key(x), expected)


def test_bad_input(tiny_bert):
    with pytest.raises(tt.ConfigError, match="init"):
        tt.IA3Config(init="zeros")
    with pytest.raises(tt.ConfigError, match="subset"):
        tt.IA3Config(targets=["key"], feedforward=["value"])
    with pytest.raises(ValueError, match="IA3 cannot scale .*word_embeddings"):
        tt.apply(tiny_bert, tt.IA3Config(targets=["word_embeddings"]))
    assert not any(isinstance(m, TunedLayer) and m.deltas for m in tiny_bert.modules())
    with pytest.raises(tt.TargetError, match="no default targets"):
        tt.apply(torch.nn.Sequential(torch.nn.Linear(2, 2)), tt.IA3Config())


def test_training_matches_peft_step_by_step(minilm_path, token_ids):
    """Real weights, dropout on, the classifier trained as a copy (modules_to_save): given the same
    random state at the start of training (dropout draws), trimtune's and peft's IA3 follow the same
    losses step by step. (The demo's quality table differs between the two by seed only through the
    random numbers each library's setup consumes before training.)"""
    base = _minilm(minilm_path)
    ours = tt.apply(copy.deepcopy(base), tt.IA3Config(modules_to_save=["classifier"]))
    theirs = peft_model(copy.deepcopy(base), PeftIA3Config(modules_to_save=["classifier"]))
    labels = torch.tensor([0, 1] * (len(token_ids) // 2) + [0] * (len(token_ids) % 2))
    losses = []
    for model in (ours, theirs):
        params = [p for p in model.parameters() if p.requires_grad]
        assert sum(p.numel() for p in params) == 6 * (384 + 384 + 384 + 1536) + 2 * 384 + 2  # per layer k, v, both output.dense inputs; head
        losses.append(adamw_losses(model, [{"input_ids": token_ids, "labels": labels}] * 6, lr=1e-2, seed=7))
    assert losses[0][0] != losses[0][-1]  # it trains
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)
