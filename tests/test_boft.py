"""BOFT against peft 0.21's ``BOFTConfig``: butterfly permutations, logits, training (block dropout
included), merging, files both ways (atol 1e-5), on a tiny Llama (Linear) and a tiny CNN (Conv2d).

peft builds several butterfly factors only with its CUDA kernel ``fbd_cuda`` (a block-diagonal matrix
from a batch of blocks); on a CPU it falls back to one factor. ``several_factors_in_peft`` stands in
for that kernel with its definition in plain torch (``torch.block_diag`` per factor, and the blocks of
the gradient back), so peft's own permutations and products are what trimtune is compared with."""

from __future__ import annotations

import copy
import json

import peft
import peft.tuners.boft.layer as peft_boft
import pytest
import torch

import trimtune as tt
from trimtune.core.state import layers

from _peft_parity import assert_merges_like_peft, assert_parity, copy_from_peft
from _training_helpers import adamw_losses
from test_oft import IMAGES, _WithLoss, tiny_cnn

LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj"]  # inputs 32, 32, 64 wide
CNN_TARGETS = ["0", "2", "4", "6"]  # 3×3 conv (36 patch values), 1×1 conv (8), 3×3 stride 2 (108), Linear (64)


class _BlockDiagonalKernel:
    """What peft's fbd_cuda computes, in torch: (N, D, b, b) blocks -> (N, D·b, D·b) block-diagonal matrices."""

    @staticmethod
    def forward(blocks):
        return [torch.stack([torch.block_diag(*factor) for factor in blocks])]

    @staticmethod
    def backward(grad, blocks):
        size = blocks.shape[-1]
        return [torch.stack([torch.stack([g[d * size:(d + 1) * size, d * size:(d + 1) * size]
                                          for d in range(blocks.shape[1])]) for g in grad])]


@pytest.fixture
def several_factors_in_peft(monkeypatch):
    monkeypatch.setattr(peft_boft, "get_fbd_cuda", lambda: _BlockDiagonalKernel)


@pytest.fixture
def peft_on_cpu(monkeypatch):
    """peft's CPU fallback (one factor, ``torch.block_diag``), without its attempt to compile the CUDA kernel."""
    monkeypatch.setattr(peft_boft, "get_fbd_cuda", lambda: None)


def _pair(model, targets, **kwargs):
    """peft's adapter and ours on copies of ``model``, ours holding peft's tensors, randomised (BOFT
    starts at the identity rotation and unit scale)."""
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.BOFTConfig(target_modules=targets, **kwargs))
    ours = tt.apply(copy.deepcopy(model), tt.BOFTConfig(targets=targets, **kwargs))
    copy_from_peft(theirs, ours)  # asserts every tensor has peft's shape
    return ours, theirs


def _case(name, request):
    if name == "llama":
        ids = request.getfixturevalue("token_ids")
        return request.getfixturevalue("tiny_llama"), LLAMA_TARGETS, lambda m: m(input_ids=ids).logits
    return tiny_cnn(), CNN_TARGETS, lambda m: m(IMAGES)


def _out(run, model):
    with torch.no_grad():
        return run(model)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"boft_block_num": 4}, r"give one of boft_block_size and boft_block_num, the other 0, .*; got boft_block_size=4 and "
                            r"boft_block_num=4"),
    ({"boft_block_size": 0}, "got boft_block_size=0 and boft_block_num=0"),
    ({"boft_n_butterfly_factor": 0}, "boft_n_butterfly_factor must be an integer >= 1, got 0"),
    ({"boft_dropout": 1.5}, r"boft_dropout must be a number in \[0, 1\), got 1.5"),
    ({"init": "gaussian"}, "init must be one of 'default', 'random', got 'gaussian'"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.BOFTConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"boft_block_size": 5}, r"boft_block_size=5 does not divide the input width of model.layers.0.self_attn.q_proj \(32\); "
                             r"boft_block_size must divide every target's input width, here one of \[1, 2, 4, 8, 16, 32\]"),
    ({"boft_block_size": 0, "boft_block_num": 3}, r"boft_block_num=3 does not divide the input width of .*q_proj \(32\)"),
    ({"boft_block_size": 8, "boft_n_butterfly_factor": 4},
     r"boft_n_butterfly_factor=4 needs even blocks, a multiple of 2\^3 = 8 of them and an even block size; "
     r"boft_block_size=8 gives 4 blocks of 8 on the input width of model.layers.0.self_attn.q_proj \(32\)"),
])
def test_a_block_layout_that_does_not_fit_a_width_is_refused_and_the_model_is_unchanged(kwargs, message, tiny_llama,
                                                                                          token_ids):
    run = lambda m: m(input_ids=token_ids).logits  # noqa: E731
    base, keys = _out(run, tiny_llama), list(tiny_llama.state_dict())
    with pytest.raises(tt.ConfigError, match=message):
        tt.apply(tiny_llama, tt.BOFTConfig(targets=["down_proj", "q_proj"], **kwargs))  # down_proj (64) wrapped first
    assert list(tiny_llama.state_dict()) == keys and not list(layers(tiny_llama)) and tt.active_adapters(tiny_llama) == []
    torch.testing.assert_close(_out(run, tiny_llama), base, atol=0, rtol=0)


def test_unsupported_layers_are_refused(tiny_llama):
    with pytest.raises(ValueError, match=r"BOFT supports Linear and Conv2d layers; model.embed_tokens is Embedding"):
        tt.apply(tiny_llama, tt.BOFTConfig(targets=["q_proj", "embed_tokens"]))
    assert not list(layers(tiny_llama))


def test_butterfly_permutations_are_peft_s():
    from trimtune.methods.boft.butterfly import butterfly_permutation

    checked = 0
    for width in (8, 16, 32, 36, 48, 64):
        for groups in (1, 2, 4, 8):
            for half in (1, 2, 3, 4):
                if width % groups or (width // groups) % (2 * half):
                    continue
                reference = peft_boft.BOFTLayer.block_butterfly_perm(None, width, groups, half, n_butterfly_factor=1)
                assert torch.equal(butterfly_permutation(width, groups, half), reference), (width, groups, half)
                checked += 1
    assert checked > 20


LLAMA_LAYOUTS = [{"boft_block_size": 4}, {"boft_block_size": 4, "boft_n_butterfly_factor": 2},
                 {"boft_block_size": 2, "boft_n_butterfly_factor": 3}]  # boft_block_num: test_files_both_ways


@pytest.mark.parametrize("kwargs", LLAMA_LAYOUTS, ids=["block-size", "2-factors", "3-factors"])
def test_starts_unchanged_then_gives_peft_logits(kwargs, request, several_factors_in_peft):
    model, targets, run = _case("llama", request)
    base = _out(run, model)
    torch.testing.assert_close(_out(run, tt.apply(copy.deepcopy(model), tt.BOFTConfig(targets=targets, **kwargs))), base,
                               atol=1e-6, rtol=0)
    ours, theirs = _pair(model, targets, **kwargs)
    assert tuple(theirs.base_model.model.model.layers[0].self_attn.q_proj.boft_R["default"].shape)[0] == \
        kwargs.get("boft_n_butterfly_factor", 1)  # peft did build every factor
    assert_parity(_out(run, ours), _out(run, theirs), base)


def test_cnn_gives_peft_logits(peft_on_cpu):
    model = tiny_cnn()
    ours, theirs = _pair(model, CNN_TARGETS, boft_block_size=4)
    assert_parity(_out(lambda m: m(IMAGES), ours), _out(lambda m: m(IMAGES), theirs), _out(lambda m: m(IMAGES), model))


TRAINING = [("llama", {"boft_block_size": 4, "boft_n_butterfly_factor": 2, "boft_dropout": 0.5}),
            ("cnn", {"boft_block_size": 4, "boft_dropout": 0.3})]


@pytest.mark.parametrize(("case", "kwargs"), TRAINING, ids=["llama-2-factors-dropout", "cnn-dropout"])
def test_training_losses_match_peft(case, kwargs, request, several_factors_in_peft):
    """AdamW steps from the same seed: the same losses, peft's block dropout draws included."""
    model, targets, _ = _case(case, request)
    ours, theirs = _pair(model, targets, **kwargs)
    if case == "llama":
        torch.manual_seed(5)
        batches = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (4, 2, 8))]
    else:
        batches = [{"x": IMAGES, "labels": torch.tensor([0, 3, 1])}] * 4
        ours, theirs = _WithLoss(ours), _WithLoss(theirs)
    losses = [adamw_losses(m, batches, lr=1e-2, seed=7) for m in (ours, theirs)]
    assert losses[0][0] != losses[0][-1]  # it trains
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("case", "kwargs"), [("llama", {"boft_block_size": 4, "boft_n_butterfly_factor": 2}),
                                              ("cnn", {"boft_block_size": 4})], ids=["llama-2-factors", "cnn"])
def test_merge_gives_peft_merged_weights_and_unmerge_restores(case, kwargs, request, several_factors_in_peft):
    model, targets, run = _case(case, request)
    ours, theirs = _pair(model, targets, **kwargs)
    assert_merges_like_peft(ours, theirs, lambda m: _out(run, m), _out(run, model))


@pytest.mark.parametrize(("case", "kwargs"), [("llama", {"boft_block_size": 0, "boft_block_num": 8, "boft_n_butterfly_factor": 2}),
                                              ("cnn", {"boft_block_size": 4})], ids=["llama-2-factors", "cnn"])
def test_files_both_ways_with_peft(case, kwargs, request, tmp_path, several_factors_in_peft):
    model, targets, run = _case(case, request)
    ours, theirs = _pair(model, targets, **kwargs)
    live, base = _out(run, ours), _out(run, model)
    tt.save_adapter(ours, tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BOFT" and all(saved[k] == v for k, v in kwargs.items())
    assert_parity(_out(run, peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "ours").eval()), live, base)
    theirs.save_pretrained(tmp_path / "theirs")
    fresh = copy.deepcopy(model)
    config = tt.load_adapter(fresh, tmp_path / "theirs")
    assert type(config) is tt.BOFTConfig and all(getattr(config, k) == v for k, v in kwargs.items())
    assert_parity(_out(run, fresh), live, base)


def test_recipe_method_type_builds_the_config():
    from trimtune.recipes.load import validate

    recipe = validate({"model": {"path": "minilm"}, "data": {"train": "demo"},
                       "method": {"type": "boft", "boft_block_size": 8, "boft_n_butterfly_factor": 2, "targets": "query"}})
    config = recipe.method.build()
    assert type(config) is tt.BOFTConfig and (config.boft_block_size, config.boft_n_butterfly_factor) == (8, 2)
