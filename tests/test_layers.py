"""The wrapper: same outputs and state-dict keys as the base, merge/unmerge/unload exact, one forward."""

import copy

import pytest
import torch
from torch import nn

import trimtune as tt
from trimtune.core.state import layers, wrap
from trimtune.core.tuned_layer import TunedLayer
from trimtune.methods.lora.delta import LoraDelta


def _gpt2_conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D(6, 5)


BASES = {
    "linear": (lambda: nn.Linear(5, 6), lambda: torch.randn(3, 4, 5)),
    "linear-nobias": (lambda: nn.Linear(5, 6, bias=False), lambda: torch.randn(3, 5)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, padding=1), lambda: torch.randn(2, 3, 10)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2), lambda: torch.randn(2, 3, 12, 12)),
    "conv2d-reflect": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), lambda: torch.randn(2, 3, 8, 8)),
    "embedding": (lambda: nn.Embedding(11, 6, padding_idx=0), lambda: torch.randint(0, 11, (2, 7))),
    "gpt2-conv1d": (_gpt2_conv1d, lambda: torch.randn(2, 4, 5)),
}


class Holder(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


@pytest.fixture(params=sorted(BASES))
def base_case(request):
    torch.manual_seed(0)
    make_layer, make_input = BASES[request.param]
    return Holder(make_layer()), make_input()


def test_wrapping_keeps_outputs_and_state_dict_keys(base_case):
    model, x = base_case
    expected = model(x)
    keys = list(model.state_dict())
    layer = wrap(model, "layer")
    assert isinstance(model.layer, TunedLayer)
    assert torch.equal(model(x), expected)
    assert list(model.state_dict()) == keys
    # A base checkpoint loads into the wrapped model without key surgery.
    fresh = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(fresh)
    assert torch.equal(layer.weight, fresh["layer.weight"])


def _randomise_lora(model):
    for _, layer in layers(model):
        for delta in layer.deltas.values():
            nn.init.normal_(delta.lora_B, std=0.5)
            nn.init.normal_(delta.lora_A, std=0.5)


def test_factored_forward_equals_merged_weight(base_case):
    model, x = base_case
    tt.apply(model, tt.LoraConfig(r=2, alpha=3, targets=["layer"]))
    _randomise_lora(model)
    factored = model(x)
    layer = model.layer
    weight = layer.weight.detach().clone()
    delta = layer.deltas["default"].delta_weight()
    assert delta.shape == weight.shape
    direct = layer.kind.forward(x, weight + delta, layer.bias)
    torch.testing.assert_close(factored, direct, atol=1e-5, rtol=1e-5)
    tt.merge(model)
    torch.testing.assert_close(model(x), factored, atol=1e-5, rtol=1e-5)
    tt.unmerge(model)
    torch.testing.assert_close(layer.weight, weight, atol=1e-6, rtol=0)


def test_unload_restores_original_class_and_weights(base_case):
    model, x = base_case
    original_type = type(model.layer)
    expected = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tt.apply(model, tt.LoraConfig(r=2, targets=["layer"]))
    _randomise_lora(model)
    tt.merge(model)
    tt.unload(model)
    assert type(model.layer) is original_type
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert not hasattr(model, "_trimtune")


def test_unload_with_merge_keeps_the_adapted_function(base_case):
    model, x = base_case
    tt.apply(model, tt.LoraConfig(r=2, targets=["layer"]))
    _randomise_lora(model)
    adapted = model(x)
    tt.unload(model, merge_adapters=True)
    assert not isinstance(model.layer, TunedLayer)
    torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=1e-5)


def test_mask_is_applied_in_forward_and_checked():
    model = Holder(nn.Linear(4, 3))
    layer = wrap(model, "layer")
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0]])
    layer.set_mask(mask)
    x = torch.randn(2, 4)
    torch.testing.assert_close(model(x), nn.functional.linear(x, layer.weight * mask, layer.bias))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\) does not fit .*\(3, 4\)"):
        layer.set_mask(torch.ones(3, 3))


def test_deepcopy_and_dtype_conversion_reach_the_base():
    model = Holder(nn.Linear(4, 3))
    tt.apply(model, tt.LoraConfig(r=2, targets=["layer"]))
    _randomise_lora(model)
    x = torch.randn(2, 4)
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(x), model(x))
    clone.layer.weight.data.add_(1.0)  # the copy owns its own tensors
    assert not torch.equal(clone.layer.weight, model.layer.weight)
    model.double()
    assert model.layer.weight.dtype == torch.float64
    assert model.layer.deltas["default"].lora_A.dtype == torch.float64
    tt.unload(model)
    assert model.layer.weight.dtype == torch.float64  # the unloaded base got the converted tensors


def test_lora_training_never_materialises_a_dense_update():
    """The factored forward saves no weight-sized tensor for backward other than the frozen base."""
    torch.manual_seed(0)
    model = Holder(nn.Linear(64, 48))
    tt.apply(model, tt.LoraConfig(r=4, targets=["layer"]))
    weight = model.layer.weight
    saved_shapes = []

    def pack(t):
        if t.data_ptr() != weight.data_ptr():
            saved_shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(torch.randn(8, 64, requires_grad=True)).sum()
    loss.backward()
    assert tuple(weight.shape) not in saved_shapes
    assert weight.grad is None
    assert model.layer.deltas["default"].lora_A.grad is not None


def test_wrapping_an_unsupported_module_names_the_allowed_types():
    with pytest.raises(TypeError, match=r"cannot wrap LayerNorm: supported layer types are .*Linear"):
        TunedLayer(nn.LayerNorm(4))


def test_grouped_conv_lora_is_refused_clearly_and_nothing_is_left_behind():
    model = Holder(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match=r"grouped convolutions \(groups=2\)"):
        tt.apply(model, tt.LoraConfig(r=2, targets=["layer"]))
    assert not any(isinstance(m, LoraDelta) for m in model.modules())
