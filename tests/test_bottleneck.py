"""Bottleneck adapters: placements, near-identity init, hand-checked forward, training, slicing, errors."""

import pytest
import torch
import torch.nn.functional as F

import trimtune as tt
from trimtune.core.tuned_layer import TunedLayer


def _wrapped(model, name="default"):
    return sorted(n for n, m in model.named_modules() if isinstance(m, TunedLayer) and name in m.deltas)


@pytest.mark.parametrize(
    ("fixture", "placement", "expected"),
    [
        ("tiny_bert", "houlsby", ["bert.encoder.layer.{i}.attention.output.dense", "bert.encoder.layer.{i}.output.dense"]),
        ("tiny_bert", "pfeiffer", ["bert.encoder.layer.{i}.output.dense"]),
        ("tiny_llama", "houlsby", ["model.layers.{i}.mlp.down_proj", "model.layers.{i}.self_attn.o_proj"]),
        ("tiny_llama", "pfeiffer", ["model.layers.{i}.mlp.down_proj"]),
        ("tiny_gpt2", "houlsby", ["transformer.h.{i}.attn.c_proj", "transformer.h.{i}.mlp.c_proj"]),
        ("tiny_gpt2", "pfeiffer", ["transformer.h.{i}.mlp.c_proj"]),
    ],
)
def test_placements_and_identity_init(fixture, placement, expected, request, token_ids):
    model = request.getfixturevalue(fixture)
    with torch.no_grad():
        before = model(input_ids=token_ids).logits
    tt.apply(model, tt.BottleneckConfig(placement=placement, reduction_factor=4))
    assert _wrapped(model) == sorted(e.format(i=i) for e in expected for i in range(2))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=token_ids).logits, before, atol=0, rtol=0)
    per_layer = 2 * 32 * 8 + 8 + 32  # d=32, bottleneck 8: down (8x32 + 8), up (32x8 + 32)
    assert tt.trainable_parameters(model)[0] == per_layer * len(expected) * 2


def test_forward_is_residual_mlp_on_the_projection_output(tiny_llama):
    tt.apply(tiny_llama, tt.BottleneckConfig(placement="pfeiffer", reduction_factor=8, activation="gelu"))
    layer = tiny_llama.model.layers[0].mlp.down_proj
    delta = layer.deltas["default"]
    with torch.no_grad():
        for p in delta.parameters():
            p.normal_()
    x = torch.randn(3, 64)
    h = F.linear(x, layer.weight)
    expected = h + F.linear(F.gelu(F.linear(h, delta.adapter_down.weight, delta.adapter_down.bias)), delta.adapter_up.weight, delta.adapter_up.bias)
    torch.testing.assert_close(layer(x), expected)
    assert delta.adapter_down.weight.shape == (4, 32)


def test_trains_only_adapters_and_lowers_loss(tiny_gpt2, token_ids):
    tt.apply(tiny_gpt2, tt.BottleneckConfig(reduction_factor=4))
    params = [p for p in tiny_gpt2.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(15):
        loss = tiny_gpt2(input_ids=token_ids, labels=token_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    changed = {n for n, p in tiny_gpt2.named_parameters() if p.grad is not None}
    assert changed and all(".deltas.default.adapter_" in n for n in changed)


def test_with_lora_on_same_layer_disable_unload(tiny_llama, token_ids):
    with torch.no_grad():
        base = tiny_llama(input_ids=token_ids).logits
    tt.apply(tiny_llama, tt.LoraConfig(r=2, targets=["o_proj"], init="gaussian"), "lora")
    tt.apply(tiny_llama, tt.BottleneckConfig(targets=["o_proj"], reduction_factor=4), "bottleneck")
    o_proj = tiny_llama.model.layers[0].self_attn.o_proj
    with torch.no_grad():
        o_proj.deltas["lora"].lora_B.normal_()
        o_proj.deltas["bottleneck"].adapter_up.weight.normal_()
    tt.set_adapter(tiny_llama, ["lora", "bottleneck"])
    x = torch.randn(2, 32)
    lora_out = F.linear(x, o_proj.weight) + o_proj.deltas["lora"].scale * x @ o_proj.deltas["lora"].lora_A.T @ o_proj.deltas["lora"].lora_B.T
    torch.testing.assert_close(o_proj(x), o_proj.deltas["bottleneck"].transform_output(lora_out))
    with torch.no_grad():
        assert not torch.allclose(tiny_llama(input_ids=token_ids).logits, base)
        with tt.disable_adapters(tiny_llama):
            torch.testing.assert_close(tiny_llama(input_ids=token_ids).logits, base)
    with pytest.raises(ValueError, match="cannot be merged"):
        tt.merge(tiny_llama, ["bottleneck"])
    tt.unload(tiny_llama)
    with torch.no_grad():
        torch.testing.assert_close(tiny_llama(input_ids=token_ids).logits, base)


def test_slice_out_keeps_the_kept_units():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8))
    tt.apply(model, tt.BottleneckConfig(targets=["0"], reduction_factor=2))
    layer = model[0]
    delta = layer.deltas["default"]
    with torch.no_grad():
        for p in delta.parameters():
            p.normal_()
    x = torch.randn(3, 6)
    keep = torch.tensor([0, 2, 5, 7])
    h = F.linear(x, layer.weight[keep], layer.bias[keep])
    # Dropping output units removes them from the adapter's input too, so compare against that reference.
    down_w = delta.adapter_down.weight[:, keep]
    reference = h + F.linear(F.relu(F.linear(h, down_w, delta.adapter_down.bias)), delta.adapter_up.weight[keep], delta.adapter_up.bias[keep])
    delta.slice_("out", keep)
    torch.testing.assert_close(delta.transform_output(h), reference)
    assert delta.adapter_down.weight.shape == (4, 4) and delta.adapter_up.weight.shape == (4, 4)


def test_bad_input():
    with pytest.raises(tt.ConfigError, match="placement"):
        tt.BottleneckConfig(placement="middle")
    with pytest.raises(tt.ConfigError, match="reduction_factor"):
        tt.BottleneckConfig(reduction_factor=0)
    with pytest.raises(tt.ConfigError, match="activation"):
        tt.BottleneckConfig(activation="swish")
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="convolution"):
        tt.apply(conv, tt.BottleneckConfig(targets=["0"]))
