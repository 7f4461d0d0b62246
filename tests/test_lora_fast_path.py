"""The fused LoRA-with-dropout branch computes exactly the plain formula, in value and gradient."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import trimtune as tt
from trimtune.core.dropped_low_rank import DroppedLowRank, dropped_low_rank, keep_mask


def _inputs(dtype=torch.float64, n=(2, 5), d_in=6, d_out=4, r=3):
    torch.manual_seed(0)
    make = lambda *shape: torch.randn(*shape, dtype=dtype, requires_grad=True)  # noqa: E731
    return make(*n, d_out), make(*n, d_in), make(r, d_in), make(d_out, r)


def _plain(y, x, a, b, scale, keep, keep_prob):
    """The textbook branch, composed from autograd ops: y + scale · ((x ⊙ keep / (1-p)) Aᵀ) Bᵀ."""
    dropped = x * keep / keep_prob
    return y + scale * (dropped @ a.t()) @ b.t()


def test_gradcheck_with_a_fixed_mask():
    y, x, a, b = _inputs()

    def branch(y, x, a, b):
        torch.manual_seed(7)  # the same mask on every call gradcheck makes
        return dropped_low_rank(y, x, a, b, 1.5, 0.3)

    assert torch.autograd.gradcheck(branch, (y, x, a, b))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_value_and_gradients_equal_the_plain_formula(p):
    y, x, a, b = _inputs(torch.float32, n=(3, 7), d_in=16, d_out=12, r=4)
    torch.manual_seed(3)
    fused = dropped_low_rank(y, x, a, b, 2.0, p)
    torch.manual_seed(3)
    keep, keep_prob = keep_mask((21, 16), p)
    keep = keep.view(3, 7, 16)
    assert 0 < keep.sum() < keep.numel()  # the mask really drops something
    plain = _plain(y, x, a, b, 2.0, keep, keep_prob)
    torch.testing.assert_close(fused, plain)
    upstream = torch.randn_like(plain)
    grads_fused = torch.autograd.grad(fused, (y, x, a, b), upstream)
    grads_plain = torch.autograd.grad(plain, (y, x, a, b), upstream)
    for got, want in zip(grads_fused, grads_plain):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(1000, 1000), (999, 1001)])  # an odd count uses half of the last draw
def test_keep_mask_keeps_each_entry_with_probability_one_minus_p(p, shape):
    torch.manual_seed(0)
    keep, keep_prob = keep_mask(shape, p)
    assert keep.shape == shape and keep.dtype == torch.uint8 and keep.max() == 1 and keep.min() == 0
    assert abs(keep_prob - (1 - p)) <= 2**-33  # 1-p rounded to a multiple of 2^-32
    n = keep.numel()
    sd = (keep_prob * (1 - keep_prob) / n) ** 0.5
    assert abs(keep.float().mean().item() - keep_prob) < 5 * sd
    # neighbouring entries share a 64-bit draw: they must still be independent
    pairs = keep.flatten()[: n - n % 2].view(-1, 2).float()
    both = (pairs[:, 0] * pairs[:, 1]).mean().item()
    assert abs(both - keep_prob**2) < 5 * (keep_prob**2 * (1 - keep_prob**2) / (n // 2)) ** 0.5


def test_keep_mask_follows_the_seed_and_differs_between_calls():
    torch.manual_seed(5)
    first, second = keep_mask((64, 64), 0.3)[0], keep_mask((64, 64), 0.3)[0]
    torch.manual_seed(5)
    assert torch.equal(keep_mask((64, 64), 0.3)[0], first)
    assert not torch.equal(first, second)


def test_dropout_keeps_the_expected_output():
    """Inverted dropout divides by the mask's exact keep probability: the mean over masks is x."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, dtype=torch.float64)
    a, b = torch.eye(8, dtype=torch.float64), torch.eye(8, dtype=torch.float64)
    y = torch.zeros(4, 8, dtype=torch.float64)
    mean = sum(dropped_low_rank(y, x, a, b, 1.0, 0.5) for _ in range(4000)) / 4000
    torch.testing.assert_close(mean, x, atol=5 * x.abs().max().item() / 4000**0.5, rtol=0)


def test_only_the_needed_gradients_are_computed():
    y, x, a, b = _inputs()
    x = x.detach()  # e.g. the output of a frozen embedding
    out = dropped_low_rank(y, x, a, b, 1.0, 0.2)
    grad_y, grad_a = torch.autograd.grad(out.sum(), (y, a))
    torch.testing.assert_close(grad_y, torch.ones_like(y))
    assert grad_a.shape == a.shape and x.grad is None


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd keeps for backward while ``fn`` builds its graph."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_sibling_branches_save_less_than_composed_dropout():
    """q and v read the same x: the fused branches share it; composed dropout keeps two dropped copies + float masks."""
    torch.manual_seed(0)
    x = torch.randn(512, 128, requires_grad=True)
    ys = [torch.randn(512, 128, requires_grad=True) for _ in range(2)]
    factors = [(torch.randn(4, 128, requires_grad=True), torch.randn(128, 4, requires_grad=True)) for _ in range(2)]
    drop = torch.nn.Dropout(0.1)

    def fused():
        return [dropped_low_rank(y, x, a, b, 2.0, 0.1) for y, (a, b) in zip(ys, factors)]

    def composed():  # peft's LoRA forward
        return [y + (drop(x) @ a.t()) @ b.t() * 2.0 for y, (a, b) in zip(ys, factors)]

    x_bytes = x.numel() * 4
    assert _saved_bytes(fused) < 2 * x_bytes  # x once + two 1-byte masks + small factors
    assert _saved_bytes(composed) > 3 * x_bytes


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("shape", [(64, 48, 40, 8), (96, 24, 72, 4)])  # (tokens, in, out, r): both layouts' cases
def test_gradients_equal_autograd_of_the_composed_branch(p, shape):
    """With and without dropout, every gradient equals autograd's through the plain formula."""
    n, d_in, d_out, r = shape
    y, x, a, b = _inputs(torch.float64, n=(2, n // 2), d_in=d_in, d_out=d_out, r=r)
    torch.manual_seed(11)
    fused = dropped_low_rank(y, x, a, b, 1.7, p)
    torch.manual_seed(11)
    keep, keep_prob = keep_mask((n, d_in), p) if p > 0 else (torch.ones(n, d_in), 1.0)
    plain = _plain(y, x, a, b, 1.7, keep.view(2, n // 2, d_in), keep_prob)
    torch.testing.assert_close(fused, plain)
    upstream = torch.randn_like(plain)
    for got, want in zip(torch.autograd.grad(fused, (y, x, a, b), upstream), torch.autograd.grad(plain, (y, x, a, b), upstream)):
        torch.testing.assert_close(got, want)


def test_gradients_without_dropout_pass_gradcheck():
    y, x, a, b = _inputs()
    assert torch.autograd.gradcheck(lambda *t: dropped_low_rank(*t, 0.7, 0.0), (y, x, a, b))


def test_lora_model_uses_the_fused_branch_only_in_training(tiny_bert, token_ids):
    tt.apply(tiny_bert, tt.LoraConfig(r=4, dropout=0.3))
    layer = dict(tt.core.state.layers(tiny_bert))["bert.encoder.layer.0.attention.self.query"]
    with torch.no_grad():
        layer.deltas["default"].lora_B.normal_()
    calls = []
    original = DroppedLowRank.apply
    with mock.patch.object(DroppedLowRank, "apply", lambda *args: calls.append(1) or original(*args)):
        tiny_bert.eval()
        with torch.no_grad():
            first, second = tiny_bert(token_ids).logits, tiny_bert(token_ids).logits
        assert not calls
        torch.testing.assert_close(first, second)  # no dropout in eval
        tiny_bert.train()
        tiny_bert(token_ids).logits.sum().backward()
    assert len(calls) == 4  # query and value of two layers
    assert layer.deltas["default"].lora_A.grad.abs().sum() > 0


def test_training_under_bf16_autocast_takes_the_composed_path_and_trains(tiny_bert, token_ids):
    tt.apply(tiny_bert, tt.LoraConfig(r=4, dropout=0.3))
    tiny_bert.train()
    calls = []
    original = DroppedLowRank.apply
    with mock.patch.object(DroppedLowRank, "apply", lambda *args: calls.append(1) or original(*args)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = tiny_bert(token_ids).logits.float().sum()
        loss.backward()
    assert not calls
    grads = [p.grad for p in tiny_bert.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def _composed_branch(y, x, a, b, scale, p):
    """The reference: the same masks (the same random draws, in the same order) through autograd ops."""
    x2 = x.reshape(-1, x.shape[-1])
    if p > 0:
        keep, keep_prob = keep_mask(x2.shape, p, x.device)
        x2 = x2 * keep / keep_prob
    return (y.reshape(-1, y.shape[-1]) + scale * (x2 @ a.t()) @ b.t()).view(y.shape)


@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_gpt2"])  # nn.Linear and GPT-2's Conv1D
@pytest.mark.parametrize("p", [0.0, 0.2])
def test_model_gradients_equal_the_composed_branch(request, model_name, p, token_ids):
    """Several adapters active (two unmerged, one merged): every LoRA gradient equals plain autograd's."""
    model = request.getfixturevalue(model_name)
    tt.apply(model, tt.LoraConfig(r=4, dropout=p), "one")
    tt.apply(model, tt.LoraConfig(r=2, alpha=3, dropout=p), "two")
    tt.apply(model, tt.LoraConfig(r=3, dropout=p), "merged")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    tt.set_adapter(model, ["one", "two", "merged"])
    tt.merge(model, ["merged"])
    model.train()

    def gradients():
        torch.manual_seed(0)
        model.zero_grad(set_to_none=True)
        model(token_ids).logits.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    original = DroppedLowRank.apply
    with mock.patch.object(DroppedLowRank, "apply", lambda *args: calls.append(1) or original(*args)):
        fused = gradients()
    targeted = {"tiny_bert": 4, "tiny_gpt2": 2}[model_name]  # query+value / c_attn, in two blocks
    assert len(calls) == 2 * targeted  # the two unmerged adapters
    with mock.patch("trimtune.core.low_rank.dropped_low_rank", _composed_branch):
        composed = gradients()
    lora = [n for n in composed if ".lora_" in n]
    assert len(lora) == 2 * 2 * targeted and all(composed[n].abs().sum() > 0 for n in lora)
    assert fused.keys() == composed.keys()
    for name in composed:
        torch.testing.assert_close(fused[name], composed[name], msg=name)
