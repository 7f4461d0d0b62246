"""SparseGPT against a plain reference written from the paper's algorithm (Frantar & Alistarh 2023,
Alg. 1 without the Cholesky trick): column by column, the inverse Hessian of the columns not yet
visited is inverted explicitly in float64 and the OBS update applied to every later column at once."""

import pytest
import torch
from torch import nn

from trimtune.core.state import wrap
from trimtune.core.config import ConfigError
from trimtune.prune import sparsity_report
from trimtune.prune.sparsegpt import Hessian, sparsegpt, sparsegpt_layer


def reference(weight, x, sparsity=None, n=0, m=0, blocksize=128, percdamp=0.01, selection="exact"):
    w = weight.double().clone()
    h = 2 * x.double().t() @ x.double() / x.shape[0]
    dead = torch.diag(h) == 0
    for j in range(h.shape[0]):
        if dead[j]:
            h[j, j] = 1
            w[:, j] = 0
    h = h + percdamp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    columns = w.shape[1]
    pruned = torch.zeros(w.shape, dtype=torch.bool)
    # d[j] = [H_F⁻¹]_00 with F = columns j.. : the OBS denominator for column j once j..end remain
    inverses = [torch.linalg.inv(h[j:, j:]) for j in range(columns)]
    d = torch.tensor([inv[0, 0] for inv in inverses], dtype=torch.float64)
    for j in range(columns):
        if not m and j % blocksize == 0:  # adaptive mask: chosen at each block start from the current weights
            end = min(j + blocksize, columns)
            score = w[:, j:end] ** 2 / d[j:end]
            if selection == "reference":  # IST-DASLab/sparsegpt fasterprune: sort, index int(numel * sparsity), <=
                flat = score.flatten().float()
                thresh = torch.sort(flat)[0][int(flat.numel() * sparsity)]
                pruned[:, j:end] = (flat <= thresh).view(score.shape)
            else:
                k = round(sparsity * score.numel())
                order = torch.argsort(score.flatten().float(), stable=True)[:k]
                block = torch.zeros(score.numel(), dtype=torch.bool)
                block[order] = True
                pruned[:, j:end] = block.view(score.shape)
        if m and j % m == 0:
            for row in range(w.shape[0]):
                score = [w[row, j + t] ** 2 / d[j + t] for t in range(m)]
                lowest = sorted(range(m), key=lambda t: score[t])[: m - n]
                for t in lowest:
                    pruned[row, j + t] = True
        for row in range(w.shape[0]):
            if pruned[row, j]:
                err = w[row, j] / d[j]
                w[row, j:] -= err * inverses[j][0, :]
                w[row, j] = 0.0
    return w.float(), ~pruned


def calibration(columns, tokens=200, dead=(3, 17)):
    torch.manual_seed(0)
    x = torch.randn(tokens, columns) * torch.linspace(0.2, 3.0, columns)  # uneven channel scales
    x[:, list(dead)] = 0
    return x


@pytest.mark.parametrize("sparsity,n,m", [(0.5, 0, 0), (0.7, 0, 0), (None, 2, 4)])
def test_kernel_matches_reference_with_dead_inputs(sparsity, n, m):
    x = calibration(48)
    torch.manual_seed(1)
    weight = torch.randn(12, 48)
    hessian = Hessian(48)
    for chunk in x.split(64):  # accumulated in pieces: the running mean must equal one big XᵀX
        hessian.add(chunk)
    new, keep = sparsegpt(weight, hessian.matrix, sparsity, n, m, blocksize=16)
    ref_w, ref_keep = reference(weight, x, sparsity, n, m, blocksize=16)
    assert torch.equal(keep, ref_keep)
    assert (new - ref_w).abs().max() <= 1e-5
    assert torch.all(new[keep == 0] == 0)
    assert torch.all(keep[:, [3, 17]] == 0)  # dead inputs are pruned
    if m:
        assert torch.all(keep.view(12, -1, 4).sum(-1) == 2)
    else:
        assert (keep == 0).float().mean().item() == pytest.approx(sparsity, abs=0.01)


def test_reconstruction_beats_plain_masking():
    torch.manual_seed(2)
    x = torch.randn(400, 16) @ torch.randn(16, 64) + 0.1 * torch.randn(400, 64)  # correlated channels, as in real activations
    weight = torch.randn(16, 64)
    hessian = Hessian(64)
    hessian.add(x)
    new, keep = sparsegpt(weight, hessian.matrix, 0.5)
    repaired = ((x @ weight.t() - x @ new.t()) ** 2).sum()
    masked_only = ((x @ weight.t() - x @ (weight * keep).t()) ** 2).sum()
    assert repaired < 0.5 * masked_only  # the OBS update repairs what the mask removes


def test_layer_linear_and_conv1d_write_weight_and_mask():
    from transformers.pytorch_utils import Conv1D

    x = calibration(32, dead=(5,))
    torch.manual_seed(3)
    linear = nn.Linear(32, 8)
    conv = Conv1D(8, 32)  # GPT-2's layout: weight stored (in, out)
    conv.weight.data = linear.weight.data.t().clone()
    conv.bias.data = linear.bias.data.clone()
    model = nn.ModuleDict({"lin": linear, "conv": conv})
    for name in ("lin", "conv"):
        layer = wrap(model, name)
        hessian = Hessian(32)
        hessian.add(x)
        sparsegpt_layer(layer, hessian, n=2, m=4, blocksize=8)
    lin, conv = model["lin"], model["conv"]
    assert torch.allclose(lin.weight, conv.weight.t(), atol=1e-6)
    assert torch.equal(lin.weight_mask, conv.weight_mask.t())
    assert torch.allclose(lin(x), conv(x), atol=1e-5)
    report = sparsity_report(model)
    assert [r.name for r in report.layers] == ["lin", "conv"]
    assert all(r.sparsity == 0.5 for r in report.layers)
    assert 5 in report.layers[0].zero_in


def test_nm_width_not_multiple_of_m_names_layer():
    layer = wrap(nn.ModuleDict({"proj": nn.Linear(30, 4)}), "proj")
    hessian = Hessian(30)
    hessian.add(torch.randn(40, 30))
    with pytest.raises(ConfigError, match=r"proj: input width 30 is not a multiple of M=4"):
        sparsegpt_layer(layer, hessian, n=2, m=4, name="proj")
    assert layer.weight_mask is None


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.3])
def test_reference_selection_matches_the_reference_code_with_dead_inputs(sparsity):
    x = calibration(48)
    torch.manual_seed(4)
    weight = torch.randn(12, 48)
    hessian = Hessian(48)
    hessian.add(x)
    new, keep = sparsegpt(weight, hessian.matrix, sparsity, blocksize=16, selection="reference")
    ref_w, ref_keep = reference(weight, x, sparsity, blocksize=16, selection="reference")
    assert torch.equal(keep, ref_keep)
    assert (new - ref_w).abs().max() <= 1e-5
    exact = sparsegpt(weight, hessian.matrix, sparsity, blocksize=16)[1]
    per_block = [(keep[:, j:j + 16] == 0).sum().item() for j in range(0, 48, 16)]
    exact_per_block = [(exact[:, j:j + 16] == 0).sum().item() for j in range(0, 48, 16)]
    assert per_block == [int(12 * 16 * sparsity) + 1] * 3  # random scores: no ties, one more than int(numel * s)
    assert exact_per_block == [round(12 * 16 * sparsity)] * 3


@pytest.mark.parametrize("selection", ["exact", "reference"])
def test_tied_scores_exact_counts_and_reference_takes_every_tie(selection):
    """Equal, uncorrelated channels (diagonal H: no update crosses columns) and integer weights: many
    scores tie at the threshold. "exact" takes them by position, "reference" all of them."""
    x = torch.cat([torch.eye(16), -torch.eye(16)]) * 2.0
    weight = torch.tensor([[float((r + c) % 3) + 1 for c in range(16)] for r in range(6)])
    hessian = Hessian(16)
    hessian.add(x)
    new, keep = sparsegpt(weight, hessian.matrix, 0.5, blocksize=8, selection=selection)
    ref_w, ref_keep = reference(weight, x, 0.5, blocksize=8, selection=selection)
    assert torch.equal(keep, ref_keep)
    assert (new - ref_w).abs().max() <= 1e-5
    pruned = int((keep == 0).sum())
    assert pruned == (48 if selection == "exact" else 64)  # ties at the threshold: 2 x 32 entries of the value 2


def test_selection_is_checked():
    from trimtune.prune.sequential import SequentialConfig

    with pytest.raises(ConfigError, match="selection must be one of"):
        sparsegpt(torch.randn(4, 8), torch.eye(8), 0.5, blocksize=8, selection="loose")
    with pytest.raises(ConfigError, match="selection 'reference' is SparseGPT's mask choice; method 'wanda' has none"):
        SequentialConfig("wanda", 0.5, selection="reference")
    with pytest.raises(ConfigError, match="selection"):
        SequentialConfig("sparsegpt", 0.5, selection="threshold")


def test_in_place_updates_the_weight_itself_and_leaves_it_on_failure():
    x = calibration(32, dead=(5,))
    torch.manual_seed(6)
    weight = torch.randn(8, 32)
    hessian = Hessian(32)
    hessian.add(x)
    copied, keep = sparsegpt(weight, hessian.matrix, 0.5, blocksize=8)
    target = weight.clone()
    updated, keep_in_place = sparsegpt(target, hessian.matrix, 0.5, blocksize=8, in_place=True)
    assert updated.data_ptr() == target.data_ptr()
    assert torch.equal(updated, copied) and torch.equal(keep_in_place, keep)
    indefinite = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    untouched = torch.tensor([[0.5, -1.5], [2.0, 0.25]])
    before = untouched.clone()
    with pytest.raises(ValueError, match="not positive definite"):
        sparsegpt(untouched, indefinite, 0.5, blocksize=2, percdamp=0.0, in_place=True)
    assert torch.equal(untouched, before)


@pytest.mark.parametrize("sparsity,n,m,selection,blocksize", [
    (0.5, 0, 0, "reference", 72), (0.6, 0, 0, "exact", 72), (None, 2, 4, "exact", 72), (None, 3, 6, "exact", 60),
])
def test_stepped_kernel_matches_the_columnwise_loop_and_the_reference(monkeypatch, sparsity, n, m, selection, blocksize):
    """Blocks wider than one inner step (LEAF columns), a last block and a last step cut short, an M
    that does not divide LEAF: the stepped kernel makes the columnwise loop's masks, and its weights
    within float rounding; both match the float64 reference."""
    from trimtune.prune import sparsegpt as module  # tt.prune is the verb: the subpackage is reached by from-import
    from _sparsegpt_columnwise import columnwise_prune_block

    assert blocksize > module.LEAF and blocksize % module.LEAF  # some steps are cut short
    columns = 2 * blocksize + 24
    x = calibration(columns, tokens=600, dead=(3, 17, blocksize + 1))
    torch.manual_seed(7)
    weight = torch.randn(40, columns)
    hessian = Hessian(columns)
    hessian.add(x)
    fast_w, fast_keep = sparsegpt(weight, hessian.matrix, sparsity, n, m, blocksize=blocksize, selection=selection)
    monkeypatch.setattr(module, "_prune_block", columnwise_prune_block)
    slow_w, slow_keep = sparsegpt(weight, hessian.matrix, sparsity, n, m, blocksize=blocksize, selection=selection)
    assert torch.equal(fast_keep, slow_keep)
    assert (fast_w - slow_w).abs().max() <= 1e-5
    assert not torch.equal(fast_w, weight * fast_keep)  # the kept weights were updated, not just masked
    ref_w, ref_keep = reference(weight, x, sparsity, n, m, blocksize=blocksize, selection=selection)
    assert torch.equal(fast_keep, ref_keep)
    assert (fast_w - ref_w).abs().max() <= 1e-4
