"""OFT against peft 0.21's ``OFTConfig``: block layout, logits, training, merging, files both ways
(atol 1e-5), on a tiny Llama (Linear) and a tiny CNN (3×3 and 1×1 Conv2d); refusals name the field."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from packaging.version import Version
from torch import nn

import trimtune as tt
from trimtune.core.state import layers

from _peft_parity import assert_merges_like_peft, assert_parity, copy_from_peft
from _training_helpers import adamw_losses

LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj"]  # inputs 32, 32, 64 wide
CNN_TARGETS = ["0", "2", "4", "6"]  # 3×3 conv (36 patch values), 1×1 conv (8), 3×3 stride 2 (108), Linear (64)
CNN_EXACT_TARGETS = ["2", "6"]  # where peft's unmerged forward is OFT's maths: 1×1 conv and Linear


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 1), nn.ReLU(), nn.Conv2d(12, 16, 3, stride=2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 5),
    ).eval()


IMAGES = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(0))


def _pair(model, targets, **kwargs):
    """peft's adapter and ours on copies of ``model``, ours holding peft's tensors (randomised: OFT starts at
    the identity, so the same random skew matrices go into both before any comparison)."""
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.OFTConfig(target_modules=targets, **kwargs))
    ours = tt.apply(copy.deepcopy(model), tt.OFTConfig(targets=targets, **kwargs))
    copy_from_peft(theirs, ours)  # asserts every tensor has peft's shape
    return ours, theirs


def _case(name, request, targets=None):
    """(model, targets, run): run(model) gives its output on fixed inputs."""
    if name == "llama":
        ids = request.getfixturevalue("token_ids")
        return request.getfixturevalue("tiny_llama"), targets or LLAMA_TARGETS, lambda m: m(input_ids=ids).logits
    return tiny_cnn(), targets or CNN_EXACT_TARGETS, lambda m: m(IMAGES)


def _out(run, model):
    with torch.no_grad():
        return run(model)


LAYOUTS = [  # peft's fields, each a layout or a parametrisation of the blocks
    {"oft_block_size": 8},
    {"oft_block_size": 8, "use_cayley_neumann": False},
    {"oft_block_size": 8, "num_cayley_neumann_terms": 3},
    {"r": 2, "oft_block_size": 0, "block_share": True, "coft": True, "eps": 0.3},  # r: files_both_ways
]
LAYOUT_IDS = ["block-size", "exact-cayley", "neumann-3", "shared-coft"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"r": 4}, r"give one of r .* and oft_block_size .*, the other 0, .*; got r=4 and oft_block_size=32"),
    ({"r": 0, "oft_block_size": 0}, "got r=0 and oft_block_size=0"),
    ({"oft_block_size": -8}, "oft_block_size must be an integer >= 0, got -8"),
    ({"module_dropout": 1.0}, r"module_dropout must be a number in \[0, 1\), got 1.0"),
    ({"eps": 0}, "eps must be a positive number, got 0"),
    ({"coft": "yes"}, "coft must be True or False, got 'yes'"),
    ({"num_cayley_neumann_terms": 0}, "num_cayley_neumann_terms must be an integer >= 1, got 0"),
    ({"init": "orthogonal"}, "init must be one of 'default', 'random', got 'orthogonal'"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.OFTConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"oft_block_size": 6}, r"oft_block_size=6 does not divide the input width of model.layers.0.self_attn.q_proj \(32\); "
                            r"oft_block_size must divide every target's input width, here one of \[1, 2, 4, 8, 16, 32\]"),
    ({"r": 3, "oft_block_size": 0}, r"r=3 does not divide the input width of model.layers.0.self_attn.q_proj \(32\)"),
    ({"oft_block_size": 64}, r"oft_block_size=64 does not divide .*q_proj \(32\)"),  # peft shrinks it to 32 silently
])
def test_a_block_layout_that_does_not_divide_a_width_is_refused_and_the_model_is_unchanged(kwargs, message, tiny_llama,
                                                                                             token_ids):
    run = lambda m: m(input_ids=token_ids).logits  # noqa: E731
    base, keys = _out(run, tiny_llama), list(tiny_llama.state_dict())
    with pytest.raises(tt.ConfigError, match=message):
        tt.apply(tiny_llama, tt.OFTConfig(targets=["down_proj", "q_proj"], **kwargs))  # down_proj (64) wrapped first
    assert list(tiny_llama.state_dict()) == keys and not list(layers(tiny_llama)) and tt.active_adapters(tiny_llama) == []
    torch.testing.assert_close(_out(run, tiny_llama), base, atol=0, rtol=0)


def test_unsupported_layers_are_refused_and_the_model_is_unchanged(tiny_llama):
    keys = list(tiny_llama.state_dict())
    with pytest.raises(ValueError, match=r"OFT supports Linear and Conv2d layers; model.embed_tokens is Embedding"):
        tt.apply(tiny_llama, tt.OFTConfig(oft_block_size=8, targets=["q_proj", "embed_tokens"]))
    assert list(tiny_llama.state_dict()) == keys and not list(layers(tiny_llama))
    dilated = nn.Sequential(nn.Conv2d(4, 4, 3, dilation=2))
    with pytest.raises(tt.ConfigError, match=r"OFT on 0 .*: peft 0.21's OFT takes square kernels, groups 1 and dilation 1; "
                                             r"this one has kernel \(3, 3\), groups 1, dilation \(2, 2\)$"):
        tt.apply(dilated, tt.OFTConfig(oft_block_size=4, targets=["0"]))


@pytest.mark.parametrize("kwargs", LAYOUTS, ids=LAYOUT_IDS)
def test_starts_unchanged_then_gives_peft_logits(kwargs, request):
    model, targets, run = _case("llama", request)
    base = _out(run, model)
    torch.testing.assert_close(_out(run, tt.apply(copy.deepcopy(model), tt.OFTConfig(targets=targets, **kwargs))), base,
                               atol=1e-6, rtol=0)  # the identity rotation
    ours, theirs = _pair(model, targets, **kwargs)
    assert_parity(_out(run, ours), _out(run, theirs), base)


def test_cnn_gives_peft_logits_on_1x1_convs_and_peft_merged_logits_on_3x3():
    """On a 1×1 kernel peft's unmerged forward is OFT's maths and ours matches it; on 3×3 kernels ours is
    what peft merges. peft 0.21's unmerged forward folds overlapping patches back by summing them, so it
    differs there, even at the identity; peft 0.22 fixed it, and ours equals its unmerged forward too."""
    model, base = tiny_cnn(), _out(lambda m: m(IMAGES), tiny_cnn())
    ours, theirs = _pair(model, CNN_EXACT_TARGETS, oft_block_size=4)
    assert_parity(_out(lambda m: m(IMAGES), ours), _out(lambda m: m(IMAGES), theirs), base)
    ours, theirs = _pair(model, CNN_TARGETS, oft_block_size=4)
    live, unmerged = _out(lambda m: m(IMAGES), ours), _out(lambda m: m(IMAGES), theirs)
    assert_parity(live, _out(lambda m: m(IMAGES), theirs.merge_and_unload()), base)
    identity = peft.get_peft_model(copy.deepcopy(model), peft.OFTConfig(target_modules=["0"], oft_block_size=4))
    identity_change = (_out(lambda m: m(IMAGES), identity) - base).abs().max()
    if Version(peft.__version__) < Version("0.22"):
        assert (unmerged - live).abs().max() > 0.1 and identity_change > 0.1
    else:
        assert_parity(live, unmerged, base)
        assert identity_change < 1e-5


class _WithLoss(nn.Module):
    """A classifier returning ``.loss`` like a transformers model, for ``adamw_losses``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, labels):
        return type("Output", (), {"loss": nn.functional.cross_entropy(self.model(x), labels)})


TRAINING = [("llama", {"oft_block_size": 8}), ("llama", {"oft_block_size": 8, "use_cayley_neumann": False, "coft": True, "eps": 0.3}),
            ("cnn", {"oft_block_size": 4})]


@pytest.mark.parametrize(("case", "kwargs"), TRAINING, ids=["llama", "llama-exact-coft", "cnn"])
def test_training_losses_match_peft(case, kwargs, request):
    """AdamW steps from the same start: the same losses (COFT's projection runs at every forward on both)."""
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


MERGES = [("llama", {"oft_block_size": 8}, None), ("llama", {"oft_block_size": 8, "use_cayley_neumann": False}, None),
          ("cnn", {"oft_block_size": 4}, CNN_TARGETS)]


@pytest.mark.parametrize(("case", "kwargs", "targets"), MERGES, ids=["llama", "llama-exact", "cnn"])
def test_merge_gives_peft_merged_weights_and_unmerge_restores(case, kwargs, targets, request):
    model, targets, run = _case(case, request, targets)
    ours, theirs = _pair(model, targets, **kwargs)
    assert_merges_like_peft(ours, theirs, lambda m: _out(run, m), _out(run, model))


@pytest.mark.parametrize(("case", "kwargs"), [("llama", {"r": 4, "oft_block_size": 0}), ("cnn", {"oft_block_size": 4})],
                         ids=["llama", "cnn"])
def test_files_both_ways_with_peft(case, kwargs, request, tmp_path):
    model, targets, run = _case(case, request)
    ours, theirs = _pair(model, targets, **kwargs)
    live, base = _out(run, ours), _out(run, model)
    tt.save_adapter(ours, tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "OFT" and (saved["r"], saved["oft_block_size"]) == (kwargs["r"] if "r" in kwargs else 0,
                                                                                   kwargs["oft_block_size"])
    assert_parity(_out(run, peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "ours").eval()), live, base)
    theirs.save_pretrained(tmp_path / "theirs")
    fresh = copy.deepcopy(model)
    config = tt.load_adapter(fresh, tmp_path / "theirs")
    assert type(config) is tt.OFTConfig and config.use_cayley_neumann is True
    assert_parity(_out(run, fresh), live, base)


def test_module_dropout_sets_a_share_of_blocks_to_the_identity_while_training(tiny_llama):
    tt.apply(tiny_llama, tt.OFTConfig(oft_block_size=8, targets=["q_proj"], init="random", module_dropout=0.5))
    delta = next(layers(tiny_llama))[1].deltas["default"]
    eye = torch.eye(8)
    identities = lambda blocks: sum(torch.allclose(b, eye) for b in blocks)  # noqa: E731
    assert identities(delta.eval().rotation()) == 0
    assert identities(delta.train().rotation()) == 2  # int(0.5 × 4 blocks)


def test_merging_into_a_pruned_linear_layer_needs_the_mask_folded_in(tiny_llama, token_ids):
    run = lambda m: m(input_ids=token_ids).logits  # noqa: E731
    tt.apply(tiny_llama, tt.OFTConfig(oft_block_size=8, targets=["q_proj"], init="random"))
    _, layer = next(layers(tiny_llama))
    layer.set_mask(torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5)
    live = _out(run, tiny_llama)
    with pytest.raises(ValueError, match="does not keep its weight's zeros; merge with keep_sparsity=False"):
        layer.merge()
    layer.merge(keep_sparsity=False)
    torch.testing.assert_close(_out(run, tiny_llama), live, atol=1e-5, rtol=0)


def test_recipe_method_type_builds_the_config():
    from trimtune.recipes.load import validate

    recipe = validate({"model": {"path": "minilm"}, "data": {"train": "demo"},
                       "method": {"type": "oft", "oft_block_size": 16, "targets": "query|value", "coft": True}})
    config = recipe.method.build()
    assert type(config) is tt.OFTConfig and config.oft_block_size == 16 and config.coft is True
