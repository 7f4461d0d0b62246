"""Gradient clipping, each mode against a hand computation on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import trimtune as tt
from trimtune.training.clip import as_clip_config

# Rows of a (3 out, 2 in) weight, λ = 0.1:
#   row 0: ‖w‖ = 5, ‖g‖ = 1    > 0.5        -> clipped to norm 0.5
#   row 1: ‖w‖ = 1, ‖g‖ = 0.05 < 0.1        -> unchanged
#   row 2: ‖w‖ = 0 -> eps 1e-3, ‖g‖ = 2 > 1e-4 -> clipped to norm 1e-4
W = [[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]]
G = [[0.6, 0.8], [0.05, 0.0], [0.0, 2.0]]
G_AGC = [[0.3, 0.4], [0.05, 0.0], [0.0, 1e-4]]


def with_grads(module: nn.Module, **grads) -> nn.Module:
    for name, values in grads.items():
        param = getattr(module, name)
        param.grad = torch.tensor(values, dtype=param.dtype)
    return module


def linear(weight, bias) -> nn.Linear:
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def test_norm_mode_scales_all_gradients_to_the_global_norm():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1, 2))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([[0.0, 12.0]])  # global norm 13
    norm = tt.clip_gradients([a, b], tt.ClipConfig("norm", 6.5))
    assert norm == pytest.approx(13.0)
    torch.testing.assert_close(a.grad, torch.tensor([1.5, 2.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.grad, torch.tensor([[0.0, 6.0]]), atol=1e-6, rtol=0)
    tt.clip_gradients([a, b], tt.ClipConfig("norm", 20.0))  # below the threshold: untouched
    torch.testing.assert_close(a.grad, torch.tensor([1.5, 2.0]), atol=1e-6, rtol=0)


def test_value_mode_clamps_each_entry():
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([-3.0, 0.5, 2.0])
    norm = tt.clip_gradients([p], tt.ClipConfig("value", 1.0))
    assert norm == pytest.approx(math.sqrt(9 + 0.25 + 4))
    assert torch.equal(p.grad, torch.tensor([-1.0, 0.5, 1.0]))


def test_agc_clips_rows_unitwise_with_eps_for_zero_weights():
    layer = with_grads(linear(W, [1.0, 2.0, 2.0]), weight=G, bias=[0.0, 0.0, 1.0])
    norm = tt.clip_gradients(layer, tt.ClipConfig("agc", 0.1, eps=1e-3))
    assert norm == pytest.approx(math.sqrt(1 + 0.0025 + 4 + 1))
    torch.testing.assert_close(layer.weight.grad, torch.tensor(G_AGC), atol=1e-7, rtol=1e-6)
    # a vector is one unit: ‖b‖ = 3, ‖g‖ = 1 > 0.3 -> scaled to norm 0.3
    torch.testing.assert_close(layer.bias.grad, torch.tensor([0.0, 0.0, 0.3]), atol=1e-7, rtol=1e-6)


def test_agc_leaves_a_vector_below_the_threshold_alone():
    layer = with_grads(linear(W, [1.0, 2.0, 2.0]), weight=G, bias=[0.0, 0.1, 0.2])  # ‖g‖ 0.22 < 0.3
    tt.clip_gradients(layer, tt.ClipConfig("agc", 0.1))
    assert torch.equal(layer.bias.grad, torch.tensor([0.0, 0.1, 0.2]))


def gpt2_conv1d(weight_out_in) -> Conv1D:
    conv = Conv1D(3, 2)  # nf=3 outputs, nx=2 inputs; weight stored (in, out)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight_out_in).t())
    return conv


@pytest.mark.parametrize("wrapped", [False, True])
def test_agc_uses_the_output_columns_of_gpt2_conv1d(wrapped):
    """Conv1D stores its weight (in, out): the output units are columns, plain or wrapped."""
    model = nn.Sequential(tt.TunedLayer(gpt2_conv1d(W)) if wrapped else gpt2_conv1d(W))
    model[0].weight.grad = torch.tensor(G).t()
    tt.clip_gradients(model, tt.ClipConfig("agc", 0.1))
    torch.testing.assert_close(model[0].weight.grad, torch.tensor(G_AGC).t(), atol=1e-7, rtol=1e-6)


def test_agc_on_a_parameter_list_takes_rows_as_units():
    p = nn.Parameter(torch.tensor(W))
    p.grad = torch.tensor(G)
    tt.clip_gradients([p], tt.ClipConfig("agc", 0.1))
    torch.testing.assert_close(p.grad, torch.tensor(G_AGC), atol=1e-7, rtol=1e-6)


def test_agc_tensor_clips_the_whole_tensor_against_its_weight_norm():
    layer = with_grads(linear(W, [0.0, 0.0, 0.0]), weight=G, bias=[0.0, 3.0, 4.0])
    tt.clip_gradients(layer, tt.ClipConfig("agc-tensor", 0.1))
    # weight: ‖W‖ = sqrt(26), ‖G‖ = sqrt(5.0025) > 0.1 sqrt(26)
    expected = torch.tensor(G) * (0.1 * math.sqrt(26) / math.sqrt(5.0025))
    torch.testing.assert_close(layer.weight.grad, expected, atol=1e-7, rtol=1e-6)
    # bias is all zeros: eps 1e-3 -> max norm 1e-4, ‖g‖ = 5
    torch.testing.assert_close(layer.bias.grad, torch.tensor([0.0, 3.0, 4.0]) * (1e-4 / 5), atol=1e-9, rtol=1e-6)


def test_agc_tensor_below_threshold_is_unchanged():
    layer = with_grads(linear(W, [1.0, 1.0, 1.0]), weight=[[0.01, 0.0]] * 3, bias=[0.0, 0.0, 0.01])
    tt.clip_gradients(layer, tt.ClipConfig("agc-tensor", 0.1))
    assert torch.equal(layer.weight.grad, torch.tensor([[0.01, 0.0]] * 3))


def test_parameters_without_gradients_are_skipped():
    layer = linear(W, [0.0, 0.0, 0.0])
    assert tt.clip_gradients(layer, tt.ClipConfig("agc", 0.1)) == 0.0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(mode="l2"), ["ClipConfig.mode", "'norm'", "'agc-tensor'", "'l2'"]),
        (dict(threshold=0), ["ClipConfig.threshold", "positive", "0"]),
        (dict(threshold=-1.0), ["ClipConfig.threshold", "-1.0"]),
        (dict(threshold=float("nan")), ["ClipConfig.threshold", "nan"]),
        (dict(threshold=True), ["ClipConfig.threshold", "True"]),
        (dict(eps=0.0), ["ClipConfig.eps", "positive"]),
    ],
)
def test_bad_clip_config_values_are_clear_errors(kwargs, words):
    with pytest.raises(tt.ConfigError) as error:
        tt.ClipConfig(**kwargs)
    for word in words:
        assert word in str(error.value)


def test_a_number_means_norm_clipping_and_other_types_are_refused():
    assert as_clip_config(2) == tt.ClipConfig("norm", 2.0)
    assert as_clip_config(None) is None
    with pytest.raises(TypeError, match="ClipConfig or a number"):
        as_clip_config("1.0")
