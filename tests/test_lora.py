"""LoRA on Hugging Face models: config checks, scaling, init, adapters, heads, biases, peft forward parity."""

import math

import pytest
import torch
from torch import nn

import trimtune as tt
from trimtune.core.state import layers


def _randomise(model, std=0.2):
    torch.manual_seed(3)
    for _, layer in layers(model):
        for delta in layer.deltas.values():
            nn.init.normal_(delta.lora_B, std=std)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, r"r must be an integer >= 1, got 0"),
        ({"r": 2.5}, r"r must be an integer >= 1, got 2.5"),
        ({"alpha": 0}, r"alpha must be a positive number, got 0"),
        ({"alpha": float("nan")}, r"alpha must be a positive number"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be a number in \[0, 1\)"),
        ({"init": "loftq"}, r"init must be one of 'default', 'gaussian', .*got 'loftq'"),
        ({"bias": "some"}, r"bias must be one of 'none', 'all', 'lora_only'"),
    ],
)
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.LoraConfig(**kwargs)


def test_scaling_plain_and_rslora():
    assert tt.LoraConfig(r=16, alpha=32).scale == 2.0
    assert tt.LoraConfig(r=16, alpha=32, use_rslora=True).scale == 32 / math.sqrt(16)


def test_default_init_leaves_model_unchanged_and_gaussian_has_std_1_over_r(tiny_bert, token_ids):
    expected = tiny_bert(token_ids).logits
    tt.apply(tiny_bert, tt.LoraConfig(r=8, init="gaussian"))
    torch.testing.assert_close(tiny_bert(token_ids).logits, expected)
    a = torch.cat([layer.deltas["default"].lora_A.flatten() for _, layer in layers(tiny_bert)])
    assert abs(a.std().item() - 1 / 8) < 0.02
    assert all(torch.count_nonzero(layer.deltas["default"].lora_B) == 0 for _, layer in layers(tiny_bert))


def test_only_adapter_parameters_train(tiny_bert, token_ids):
    tt.apply(tiny_bert, tt.LoraConfig(r=4))
    trainable = [n for n, p in tiny_bert.named_parameters() if p.requires_grad]
    assert trainable and all(".deltas.default.lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (query, value) x (A, B)
    count, total = tt.trainable_parameters(tiny_bert)
    assert count == sum(p.numel() for n, p in tiny_bert.named_parameters() if p.requires_grad)
    assert total == sum(p.numel() for p in tiny_bert.parameters())


def test_print_trainable_parameters_format(tiny_bert, capsys):
    tt.apply(tiny_bert, tt.LoraConfig(r=4))
    tt.print_trainable_parameters(tiny_bert)
    out = capsys.readouterr().out
    trainable, total = tt.trainable_parameters(tiny_bert)
    assert f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}" in out


def test_dropout_only_in_training(tiny_bert, token_ids):
    tt.apply(tiny_bert, tt.LoraConfig(r=4, dropout=0.5))
    _randomise(tiny_bert)
    tiny_bert.eval()
    assert torch.equal(tiny_bert(token_ids).logits, tiny_bert(token_ids).logits)
    tiny_bert.train()
    torch.manual_seed(0)
    first = tiny_bert(token_ids).logits
    second = tiny_bert(token_ids).logits
    assert not torch.equal(first, second)


def test_several_adapters_switch_combine_disable_delete(tiny_bert, token_ids):
    base = tiny_bert(token_ids).logits
    tt.apply(tiny_bert, tt.LoraConfig(r=4), name="a")
    _randomise(tiny_bert)
    out_a = tiny_bert(token_ids).logits
    tt.apply(tiny_bert, tt.LoraConfig(r=2, targets="query"), name="b")
    for _, layer in layers(tiny_bert):
        if "b" in layer.deltas:
            nn.init.normal_(layer.deltas["b"].lora_B, std=0.3)
    assert tt.active_adapters(tiny_bert) == ["b"]
    out_b = tiny_bert(token_ids).logits
    assert not torch.allclose(out_a, out_b)
    trainable = {n.split(".deltas.")[1].split(".")[0] for n, p in tiny_bert.named_parameters() if p.requires_grad}
    assert trainable == {"b"}
    tt.set_adapter(tiny_bert, "a")
    torch.testing.assert_close(tiny_bert(token_ids).logits, out_a)
    tt.set_adapter(tiny_bert, ["a", "b"])  # deltas on the same layer add up
    both = tiny_bert(token_ids).logits
    assert not torch.allclose(both, out_a) and not torch.allclose(both, out_b)
    with tt.disable_adapters(tiny_bert):
        torch.testing.assert_close(tiny_bert(token_ids).logits, base)
    torch.testing.assert_close(tiny_bert(token_ids).logits, both)
    tt.delete_adapter(tiny_bert, "b")
    torch.testing.assert_close(tiny_bert(token_ids).logits, out_a)
    assert all("b" not in layer.deltas for _, layer in layers(tiny_bert))
    with pytest.raises(KeyError, match=r"no adapter named 'b'; the model has \['a'\]"):
        tt.set_adapter(tiny_bert, "b")


def test_same_adapter_name_twice_is_refused(tiny_bert):
    tt.apply(tiny_bert, tt.LoraConfig(r=4))
    with pytest.raises(ValueError, match=r"already has an adapter named 'default'"):
        tt.apply(tiny_bert, tt.LoraConfig(r=4))


def test_merge_twice_and_unmerge_without_merge_are_errors(tiny_bert, token_ids):
    tt.apply(tiny_bert, tt.LoraConfig(r=4))
    _randomise(tiny_bert)
    before = {n: p.detach().clone() for n, p in tiny_bert.named_parameters()}
    out = tiny_bert(token_ids).logits
    with pytest.raises(ValueError, match="no adapter is merged"):
        tt.unmerge(tiny_bert)
    tt.merge(tiny_bert)
    torch.testing.assert_close(tiny_bert(token_ids).logits, out, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"adapter 'default' is already merged"):
        tt.merge(tiny_bert)
    with pytest.raises(ValueError, match="unmerge before disabling"):
        with tt.disable_adapters(tiny_bert):
            pass
    tt.unmerge(tiny_bert)
    for name, param in tiny_bert.named_parameters():
        torch.testing.assert_close(param, before[name], atol=1e-6, rtol=0)


def test_modules_to_save_trains_a_copy_per_adapter(tiny_bert, token_ids):
    original = tiny_bert.classifier.weight.detach().clone()
    tt.apply(tiny_bert, tt.LoraConfig(r=4, modules_to_save=["classifier"]), name="a")
    assert "classifier.weight" in tiny_bert.state_dict()  # original keys unchanged
    head = tiny_bert.classifier.copies["a"]
    assert all(p.requires_grad for p in head.parameters())
    assert not tiny_bert.classifier.weight.requires_grad
    optimizer = torch.optim.SGD([p for p in tiny_bert.parameters() if p.requires_grad], lr=0.5)
    loss = tiny_bert(token_ids, labels=torch.tensor([0, 2])).loss
    loss.backward()
    optimizer.step()
    assert not torch.equal(head.weight, original)
    assert torch.equal(tiny_bert.classifier.weight, original)
    with tt.disable_adapters(tiny_bert):  # the base head is back
        base_logits = tiny_bert(token_ids).logits
    tt.apply(tiny_bert, tt.LoraConfig(r=4, modules_to_save=["classifier"]), name="b")
    assert torch.equal(tiny_bert.classifier.copies["b"].weight, original)
    tt.set_adapter(tiny_bert, "a")
    assert not torch.allclose(tiny_bert(token_ids).logits, base_logits)
    tt.unload(tiny_bert, merge_adapters=True)
    assert torch.equal(tiny_bert.classifier.weight, head.weight)


def test_bias_modes_choose_trainable_biases(tiny_bert):
    tt.apply(tiny_bert, tt.LoraConfig(r=4, bias="lora_only"), name="a")
    biases = sorted(n for n, p in tiny_bert.named_parameters() if p.requires_grad and n.endswith("bias"))
    assert biases == sorted(f"bert.encoder.layer.{i}.attention.self.{m}.bias" for i in (0, 1) for m in ("query", "value"))
    tt.apply(tiny_bert, tt.LoraConfig(r=4, bias="all"), name="b")
    all_biases = [n for n, p in tiny_bert.named_parameters() if n.endswith("bias")]
    assert all(dict(tiny_bert.named_parameters())[n].requires_grad for n in all_biases)


def test_forward_matches_peft_with_the_same_weights(tiny_bert, token_ids):
    """Same factors in peft and in trimtune give the same logits (file interop is tested elsewhere)."""
    import copy

    from peft import LoraConfig, get_peft_model

    twin = copy.deepcopy(tiny_bert)
    tt.apply(tiny_bert, tt.LoraConfig(r=4, alpha=8, use_rslora=True))
    _randomise(tiny_bert)
    peft_model = get_peft_model(twin, LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["query", "value"]))
    for name, layer in layers(tiny_bert):
        peft_layer = peft_model.base_model.model.get_submodule(name)
        peft_layer.lora_A["default"].weight.data.copy_(layer.deltas["default"].lora_A)
        peft_layer.lora_B["default"].weight.data.copy_(layer.deltas["default"].lora_B)
    torch.testing.assert_close(tiny_bert(token_ids).logits, peft_model(token_ids).logits, atol=1e-6, rtol=1e-5)
    assert tt.trainable_parameters(tiny_bert)[0] == peft_model.get_nb_trainable_parameters()[0]


def test_lora_on_llama_and_gpt2_generates(tiny_llama, tiny_gpt2, token_ids):
    for model in (tiny_llama, tiny_gpt2):
        base_tokens = model.generate(token_ids, max_new_tokens=5, do_sample=False)
        tt.apply(model, tt.LoraConfig(r=4))
        torch.testing.assert_close(model.generate(token_ids, max_new_tokens=5, do_sample=False), base_tokens)
        _randomise(model, std=1.0)
        adapted = model.generate(token_ids, max_new_tokens=5, do_sample=False)
        logits = model(adapted).logits
        tt.merge(model)
        torch.testing.assert_close(model(adapted).logits, logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.generate(token_ids, max_new_tokens=5, do_sample=False), adapted)
