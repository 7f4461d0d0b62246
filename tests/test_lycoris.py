"""LoHa and LoKr against peft's ``LoHaConfig`` / ``LoKrConfig``: factor shapes, logits, dropout, training,
merging, files both ways (atol 1e-5), on a tiny Llama (Linear) and a tiny CNN (3×3 and 1×1 Conv2d)."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from torch import nn

import trimtune as tt
from trimtune.core.state import layers

from _peft_parity import assert_merges_like_peft, assert_parity, copy_from_peft
from _training_helpers import adamw_losses

METHODS = {"loha": (tt.LoHaConfig, peft.LoHaConfig), "lokr": (tt.LoKrConfig, peft.LoKrConfig)}
NAMES = {"loha": "LoHa", "lokr": "LoKr"}
LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj"]
CNN_TARGETS = ["0", "2", "4"]  # 3×3, 1×1, 3×3 (stride 2)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 1), nn.ReLU(), nn.Conv2d(12, 16, 3, stride=2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 5),
    ).eval()


IMAGES = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(0))


def _pair(method, model, targets, **kwargs):
    """peft's adapter and ours on copies of ``model``, ours holding peft's (randomised) tensors."""
    ours_cls, peft_cls = METHODS[method]
    peft_kwargs = {k: v for k, v in kwargs.items() if k != "init"}
    if "init" in kwargs:
        peft_kwargs["init_weights"] = {"default": True, "random": False, "lycoris": "lycoris"}[kwargs["init"]]
    theirs = peft.get_peft_model(copy.deepcopy(model), peft_cls(target_modules=targets, **peft_kwargs))
    ours = tt.apply(copy.deepcopy(model), ours_cls(targets=targets, **kwargs))
    copy_from_peft(theirs, ours)  # asserts every tensor has peft's shape
    return ours, theirs


def _case(name, request):
    """(model, targets, run): run(model) gives its output on fixed inputs."""
    if name == "llama":
        ids = request.getfixturevalue("token_ids")
        return request.getfixturevalue("tiny_llama"), LLAMA_TARGETS, lambda m: m(input_ids=ids).logits
    return tiny_cnn(), CNN_TARGETS, lambda m: m(IMAGES)


CASES = [("llama", {}), ("cnn", {}), ("cnn", {"use_effective_conv2d": True})]
CASE_IDS = ["llama", "cnn", "cnn-effective"]


def _out(run, model):
    with torch.no_grad():
        return run(model)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"r": 0}, "r must be an integer >= 1, got 0"),
    ({"alpha": 0}, "alpha must be a positive number, got 0"),
    ({"rank_dropout": 1.0}, r"rank_dropout must be a number in \[0, 1\), got 1.0"),
    ({"module_dropout": -0.1}, r"module_dropout must be a number in \[0, 1\), got -0.1"),
    ({"use_effective_conv2d": "yes"}, "use_effective_conv2d must be True or False, got 'yes'"),
    ({"init": "gaussian"}, "init must be one of 'default', .*'random', got 'gaussian'"),
    ({"rank_pattern": {"q_proj": 0}}, r"rank_pattern\['q_proj'\] must be an integer >= 1, got 0"),
])
def test_bad_config_values_are_named(method, kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        METHODS[method][0](**kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_unsupported_layers_are_refused_and_the_model_is_unchanged(method, tiny_llama):
    keys = list(tiny_llama.state_dict())
    name = NAMES[method]
    with pytest.raises(ValueError, match=rf"{name} supports Linear and Conv2d layers; model.embed_tokens is Embedding"):
        tt.apply(tiny_llama, METHODS[method][0](targets=["q_proj", "embed_tokens"]))  # q_proj wrapped first
    assert list(tiny_llama.state_dict()) == keys and not list(layers(tiny_llama))
    conv1d = nn.Sequential(nn.Conv1d(4, 4, 3))
    with pytest.raises(ValueError, match=rf"{name} supports Linear and Conv2d layers; 0 is Conv1d"):
        tt.apply(conv1d, METHODS[method][0](targets=["0"]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("case", "kwargs"), CASES, ids=CASE_IDS)
def test_starts_unchanged_then_gives_peft_logits(method, case, kwargs, request):
    model, targets, run = _case(case, request)
    base = _out(run, model)
    ours = tt.apply(copy.deepcopy(model), METHODS[method][0](r=2, alpha=4, targets=targets, **kwargs))
    torch.testing.assert_close(_out(run, ours), base, atol=0, rtol=0)  # one factor starts at zero
    ours, theirs = _pair(method, model, targets, r=2, alpha=4, **kwargs)
    assert_parity(_out(run, ours), _out(run, theirs), base)


# peft 0.21.2's LoHa Tucker backward (HadaWeightCP) gives wrong gradients for hada_w1_a / hada_w2_a (it
# fails torch.autograd.gradcheck), so LoHa with use_effective_conv2d trains differently there from the first
# update on, while trimtune's Tucker form is plain autograd.
TRAINING = [(m, case, kwargs) for m in METHODS for case, kwargs in CASES if not (m == "loha" and kwargs)]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize(("method", "case", "kwargs"), TRAINING, ids=[f"{m}-{c}{'-effective' * bool(k)}" for m, c, k in TRAINING])
def test_training_losses_match_peft(method, dropout, case, kwargs, request):
    """AdamW steps from the same seed: the same losses, rank and module dropout included."""
    losses = _train_both(method, case, request, r=2, rank_dropout=dropout, module_dropout=dropout, **kwargs)
    if dropout:  # the dropout draws changed the run: the match is not that of two undropped runs
        assert _train_both(method, case, request, r=2, **kwargs)[0] != losses[0]


def _train_both(method, case, request, **kwargs) -> list[list[float]]:
    """Ours and peft's losses over four AdamW steps from the same seed; asserts they match."""
    model, targets, _ = _case(case, request)
    ours, theirs = _pair(method, model, targets, alpha=4, **kwargs)
    if case == "llama":
        torch.manual_seed(5)
        batches = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (4, 2, 8))]
    else:
        batches = [{"x": IMAGES, "labels": torch.tensor([0, 3, 1])}] * 4
        ours, theirs = _WithLoss(ours), _WithLoss(theirs)
    losses = [adamw_losses(m, batches, lr=1e-2, seed=7) for m in (ours, theirs)]
    assert losses[0][0] != losses[0][-1]  # it trains
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)
    return losses


def test_loha_gradients_are_exact():
    """The Hadamard product's own backward (it rebuilds the products) against finite differences; the
    Tucker form is plain autograd."""
    from trimtune.methods.loha.delta import HadamardOfProducts

    generator = torch.Generator().manual_seed(0)
    shapes = [(5, 2), (2, 3), (5, 2), (2, 3)]
    factors = tuple(torch.randn(s, dtype=torch.float64, generator=generator, requires_grad=True) for s in shapes)
    assert torch.autograd.gradcheck(lambda *f: HadamardOfProducts.apply(*f, 0.5), factors)


class _WithLoss(nn.Module):
    """A classifier returning ``.loss`` like a transformers model, for ``adamw_losses``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, labels):
        return type("Output", (), {"loss": nn.functional.cross_entropy(self.model(x), labels)})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("case", "kwargs"), CASES, ids=CASE_IDS)
def test_merge_gives_peft_merged_weights_and_unmerge_restores(method, case, kwargs, request):
    model, targets, run = _case(case, request)
    ours, theirs = _pair(method, model, targets, r=2, alpha=4, **kwargs)
    assert_merges_like_peft(ours, theirs, lambda m: _out(run, m), _out(run, model))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("case", "kwargs"), CASES, ids=CASE_IDS)
def test_files_both_ways_with_peft(method, case, kwargs, request, tmp_path):
    model, targets, run = _case(case, request)
    ours, theirs = _pair(method, model, targets, r=2, alpha=4, **kwargs)
    live, base = _out(run, ours), _out(run, model)
    tt.save_adapter(ours, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["peft_type"] == method.upper()
    assert_parity(_out(run, peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "ours").eval()), live, base)
    theirs.save_pretrained(tmp_path / "theirs")
    fresh = copy.deepcopy(model)
    config = tt.load_adapter(fresh, tmp_path / "theirs")
    assert type(config) is METHODS[method][0] and (config.r, config.alpha) == (2, 4)
    assert config.use_effective_conv2d is bool(kwargs)
    assert_parity(_out(run, fresh), live, base)


@pytest.mark.parametrize("method", METHODS)
def test_recipe_method_type_builds_the_config(method):
    from trimtune.recipes.load import validate

    recipe = validate({"model": {"path": "minilm"}, "data": {"train": "demo"},
                       "method": {"type": method, "r": 4, "alpha": 8, "targets": "query|value", "module_dropout": 0.1}})
    config = recipe.method.build()
    assert type(config) is METHODS[method][0] and config.r == 4 and config.module_dropout == 0.1


# ---- LoKr's layouts: which factor is full, which low-rank, which a Tucker product ----
LOKR_LAYOUTS = [  # (case, kwargs, the factors the first target holds)
    ("llama", dict(r=1, decompose_both=True, decompose_factor=4), {"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"}),
    ("llama", dict(r=8, init="lycoris"), {"lokr_w1", "lokr_w2"}),  # r >= half of W2's side: full
    ("cnn", dict(r=1, use_effective_conv2d=True), {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}),
    ("cnn", dict(r=1), {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}),
]


@pytest.mark.parametrize(("case", "kwargs", "held"), LOKR_LAYOUTS, ids=["both-low-rank", "full", "tucker", "flat-conv"])
def test_lokr_layouts_match_peft_in_logits_files_and_merge(case, kwargs, held, request, tmp_path):
    model, targets, run = _case(case, request)
    base = _out(run, model)
    torch.testing.assert_close(_out(run, tt.apply(copy.deepcopy(model), tt.LoKrConfig(targets=targets, **kwargs))), base,
                               atol=0, rtol=0)  # W1 (or W2 for "lycoris") starts at zero
    ours, theirs = _pair("lokr", model, targets, alpha=4, **kwargs)
    assert {n for n, _ in next(layers(ours))[1].deltas["default"].named_parameters()} == held
    live = _out(run, ours)
    assert_parity(live, _out(run, theirs), base)
    tt.save_adapter(ours, tmp_path / "ours")
    assert_parity(_out(run, peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "ours").eval()), live, base)
    theirs.save_pretrained(tmp_path / "theirs")
    fresh = copy.deepcopy(model)
    config = tt.load_adapter(fresh, tmp_path / "theirs")
    assert {k: getattr(config, k) for k in kwargs} == kwargs
    assert_parity(_out(run, fresh), live, base)
    tt.merge(ours)
    ours_state = ours.state_dict()
    for key, weight in theirs.merge_and_unload().state_dict().items():
        torch.testing.assert_close(ours_state[key], weight, atol=1e-6, rtol=0)


def test_lokr_tucker_training_with_scaled_rank_dropout_matches_peft(request):
    _train_both("lokr", "cnn", request, r=1, use_effective_conv2d=True, rank_dropout=0.3, rank_dropout_scale=True,
                module_dropout=0.2)


def test_lokr_splits_widths_as_peft_does():
    from peft.tuners.lokr.layer import factorization

    from trimtune.methods.lokr.layout import factor_pair

    for width in range(1, 300):
        assert factor_pair(width, -1) == factorization(width, -1), width
        for factor in (d for d in (2, 3, 4, 8, 16) if width % d == 0):
            assert factor_pair(width, factor) == factorization(width, factor), (width, factor)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"decompose_factor": 0}, "decompose_factor must be -1 .* or an integer >= 1 .*, got 0"),
    ({"decompose_factor": 2.0}, "decompose_factor must be -1 .*, got 2.0"),
    ({"decompose_both": 1}, "decompose_both must be True or False, got 1"),
    ({"rank_dropout_scale": None}, "rank_dropout_scale must be True or False, got None"),
])
def test_lokr_bad_config_values_are_named(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.LoKrConfig(**kwargs)


def test_a_decompose_factor_that_does_not_divide_a_width_is_refused_and_the_model_is_unchanged(tiny_llama, token_ids):
    base, keys = _out(lambda m: m(input_ids=token_ids).logits, tiny_llama), list(tiny_llama.state_dict())
    with pytest.raises(tt.ConfigError, match=r"decompose_factor=3 does not divide the output width of "
                                             r"model.layers.0.self_attn.q_proj \(32\); it must be -1 .* one of \[1, 2, 4, 8, 16, 32\]"):
        tt.apply(tiny_llama, tt.LoKrConfig(decompose_factor=3))
    assert list(tiny_llama.state_dict()) == keys and not list(layers(tiny_llama)) and tt.active_adapters(tiny_llama) == []
    torch.testing.assert_close(_out(lambda m: m(input_ids=token_ids).logits, tiny_llama), base, atol=0, rtol=0)


# ---- with trimtune's pruning: the mask covers the change; shrink refuses before cutting ----
@pytest.mark.parametrize("method", METHODS)
def test_on_a_pruned_layer_the_change_keeps_the_zeros_and_merges_exactly(method, tiny_llama, token_ids):
    run = lambda m: m(input_ids=token_ids).logits  # noqa: E731
    tt.apply(tiny_llama, METHODS[method][0](r=2, targets=["q_proj"], init="random"))
    _, layer = next(layers(tiny_llama))
    mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    layer.set_mask(mask)
    live, base = _out(run, tiny_llama), layer.weight.detach().clone()
    assert (layer.deltas["default"].delta_weight() * ~mask).abs().max() > 0  # the change reaches pruned entries
    tt.merge(tiny_llama)  # keep_sparsity: W + ΔW ⊙ M under the mask, what the forward computed
    assert torch.equal(layer.weight[~mask], base[~mask]) and not torch.equal(layer.weight[mask], base[mask])
    torch.testing.assert_close(_out(run, tiny_llama), live, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("case", "kwargs"), CASES, ids=CASE_IDS)
def test_loha_slices_exactly_for_structured_pruning(case, kwargs, request):
    """Keeping some output or input units of a layer keeps exactly those rows / columns of its change."""
    model, targets, _ = _case(case, request)
    tt.apply(model, tt.LoHaConfig(r=2, targets=targets, init="random", **kwargs))
    for _, layer in layers(model):
        delta = layer.deltas["default"]
        out_keep, in_keep = torch.arange(0, delta.base_shape[0], 2), torch.tensor([0, 2, 3])
        expected = delta.delta_weight()[out_keep][:, in_keep]
        delta.slice_("out", out_keep)
        delta.slice_("in", in_keep)
        assert delta.base_shape == tuple(expected.shape)
        torch.testing.assert_close(delta.delta_weight(), expected, atol=1e-6, rtol=0)


def test_shrink_refuses_lokr_layers_before_cutting_anything(tiny_llama):
    from trimtune.shrinking import shrink

    tt.apply(tiny_llama, tt.LoKrConfig(r=2, targets="all-linear"))
    before = {n: p.shape for n, p in tiny_llama.named_parameters()}
    with pytest.raises(ValueError, match=r"carries adapter 'default' \(LoKrDelta\), which cannot be sliced"):
        shrink(tiny_llama, 0.5, example_inputs={"input_ids": torch.randint(3, 100, (2, 10))})
    assert {n: p.shape for n, p in tiny_llama.named_parameters()} == before


@pytest.mark.parametrize("method", METHODS)
def test_rank_and_alpha_patterns_match_peft_and_go_through_files(method, request, tmp_path):
    model, targets, run = _case("llama", request)
    patterns = {"rank_pattern": {"v_proj": 4}, "alpha_pattern": {"layers.1.self_attn.q_proj": 1}}
    ours, theirs = _pair(method, model, targets, r=2, alpha=4, **patterns)  # shapes checked as they are copied
    live = _out(run, ours)
    assert_parity(live, _out(run, theirs), _out(run, model))
    scales = {n.split("layers.")[1]: layer.deltas["default"].scale for n, layer in layers(ours)}
    assert scales["0.self_attn.v_proj"] == 1.0 and scales["1.self_attn.q_proj"] == 0.5 and scales["0.mlp.down_proj"] == 2.0
    theirs.save_pretrained(tmp_path)
    fresh = copy.deepcopy(model)
    config = tt.load_adapter(fresh, tmp_path)
    assert (config.rank_pattern, config.alpha_pattern) == (patterns["rank_pattern"], patterns["alpha_pattern"])
    assert_parity(_out(run, fresh), live, _out(run, model))


@pytest.mark.parametrize("method", METHODS)
def test_dropout_draws_again_the_same_under_activation_checkpointing(method, tiny_llama, token_ids):
    """The recomputed forward draws the module and rank dropout it drew the first time (same gradients)."""
    tt.apply(tiny_llama, METHODS[method][0](r=2, init="random", rank_dropout=0.5, module_dropout=0.3))
    checkpointed = copy.deepcopy(tiny_llama)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    grads = []
    for model in (tiny_llama, checkpointed, tiny_llama):
        torch.manual_seed(0 if len(grads) < 2 else 1)  # (seed 3 would skip all four layers: no gradient at all)
        model.train()(input_ids=token_ids, labels=token_ids).loss.backward()
        grads.append(torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten()  # a skipped layer has none
                                for p in model.parameters() if p.requires_grad]))
        model.zero_grad(set_to_none=True)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(grads[2], grads[0])  # another seed, other draws: the dropout is live
