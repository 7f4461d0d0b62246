"""Physical shrink: the shrunk model computes what the mask form computes, adapters included."""

import copy

import pytest
import torch
from torch import nn

import trimtune as tt
from trimtune.core.state import layers
from trimtune.shrinking import UntraceableError, find_groups, replay, shrink


class ResidualNet(nn.Module):
    """Residual adds, BatchNorm, a depthwise conv, a concatenation and flatten -> Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.branch_a = nn.Conv2d(8, 6, 1)
        self.branch_b = nn.Conv2d(8, 4, 1)
        self.fuse = nn.Conv2d(10, 12, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12 * 4, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + torch.relu(self.bn1(self.block1(x)))  # residual: stem and block1 share channels
        x = self.depthwise(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.pool(torch.relu(self.fuse(x)))
        x = torch.flatten(x, 1)
        return self.head(torch.relu(self.fc(x)))


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)


def _mask_form(model, history):
    """The unshrunk model whose consumers read zeros at every removed input unit."""
    masked = copy.deepcopy(model)
    for step in history:
        if step["dim"] != "in":
            continue
        removed = sorted(set(range(step["size"])) - set(step["keep"]))
        module = masked.get_submodule(step["module"])
        channel_dim = module.kind.input_channel_dim if hasattr(module, "kind") else (1 if isinstance(module, nn.Conv2d) else -1)

        def zero_inputs(mod, args, removed=removed, dim=channel_dim):
            x = args[0].clone()
            x.index_fill_(dim % x.dim(), torch.tensor(removed), 0.0)
            return (x,) + args[1:]

        module.register_forward_pre_hook(zero_inputs)
    return masked


def _lora_random(model, **kwargs):
    tt.apply(model, tt.LoraConfig(r=2, **kwargs))
    torch.manual_seed(5)
    for _, layer in layers(model):
        for delta in layer.deltas.values():
            nn.init.normal_(delta.lora_B, std=0.3)


@pytest.mark.parametrize("adapter", [None, "lora", "loha"])
def test_cnn_shrink_equals_mask_form(adapter):
    torch.manual_seed(0)
    model = ResidualNet().eval()
    _randomise_bn(model)
    if adapter == "lora":
        _lora_random(model, targets=["block1", "branch_a", "fuse", "fc"])
    elif adapter == "loha":  # a Tucker kernel on 3x3 convolutions, flattened factors on the linear layer
        tt.apply(model, tt.LoHaConfig(r=2, init="random", use_effective_conv2d=True, targets=["block1", "branch_a", "fuse", "fc"]))
    x = torch.randn(2, 3, 8, 8)
    original = copy.deepcopy(model)
    report = shrink(model, 0.5, example_inputs=(x,))
    reference = _mask_form(original, report.history)(x)
    torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-5)
    shapes = {c.module: (c.shape_before, c.shape_after) for c in report.layers}
    assert shapes["stem"] == ([8, 3, 3, 3], [4, 3, 3, 3])
    assert shapes["block1"] == ([8, 8, 3, 3], [4, 4, 3, 3])  # coupled to stem through the residual add
    assert shapes["depthwise"] == ([8, 1, 3, 3], [4, 1, 3, 3]) and model.depthwise.groups == 4
    assert shapes["fuse"][1] == [6, 5, 3, 3]  # cat of 3 + 2 kept input channels
    assert shapes["fc"][1] == [8, 24]  # 6 kept channels x 2x2 pooled positions
    assert shapes["head"] == ([5, 16], [5, 8])  # reads fewer features; its outputs are the model output
    assert model.bn.num_features == 4 and model.bn.running_mean.shape == (4,)
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    assert "stem" in report.table() and '"history"' in report.to_json()


def test_replay_rebuilds_the_shrunk_model_on_a_fresh_copy():
    torch.manual_seed(0)
    model = ResidualNet().eval()
    fresh = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    report = shrink(model, 0.5, example_inputs=(x,))
    replay(fresh, report.history)
    torch.testing.assert_close(fresh(x), model(x))
    with pytest.raises(ValueError, match=r"history does not fit this model: .* has 4 units"):
        replay(fresh, report.history)


def _hf_inputs(model):
    torch.manual_seed(2)
    return {"input_ids": torch.randint(3, 100, (2, 10))}


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("with_lora", [False, True])
def test_transformer_shrink_equals_mask_form(fixture, with_lora, request):
    model = request.getfixturevalue(fixture)
    if with_lora:
        _lora_random(model, targets="all-linear")
    inputs = _hf_inputs(model)
    original = copy.deepcopy(model)
    ffn_before = {g.size for g in find_groups(model, structures=("ffn",))}.pop()
    report = shrink(model, 0.5, example_inputs=inputs)
    expected = _mask_form(original, report.history)(**inputs).logits
    torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
    assert report.params_after < report.params_before
    assert all(w["heads"] == 2 and w["ffn"] == ffn_before // 2 for w in report.widths["layers"])


def test_llama_gqa_modes(tiny_llama):
    inputs = _hf_inputs(tiny_llama)
    by_query = copy.deepcopy(tiny_llama)
    report = shrink(tiny_llama, 0.5, example_inputs=inputs, structures=("heads",))
    assert [(w["heads"], w["kv_heads"]) for w in report.widths["layers"]] == [(2, 1), (2, 1)]
    assert tiny_llama.config.num_key_value_heads == 1 and tiny_llama.config.head_dim == 8
    tokens = tiny_llama.generate(inputs["input_ids"], max_new_tokens=4, do_sample=False)
    assert tokens.shape == (2, 14)
    report = shrink(by_query, 0.5, example_inputs=inputs, structures=("heads",), gqa_mode="query")
    assert [(w["heads"], w["kv_heads"]) for w in report.widths["layers"]] == [(2, 2), (2, 2)]
    assert by_query.model.layers[0].self_attn.num_key_value_groups == 1
    by_query.generate(inputs["input_ids"], max_new_tokens=4, do_sample=False)


def test_round_to_and_never_empty(tiny_bert):
    report = shrink(copy.deepcopy(tiny_bert), 0.6, structures=("ffn",), round_to=8)
    assert {w["ffn"] for w in report.widths["layers"]} == {24}
    report = shrink(copy.deepcopy(tiny_bert), 0.99, structures=("heads",))
    assert {w["heads"] for w in report.widths["layers"]} == {1}
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\): a group can never be emptied"):
        shrink(tiny_bert, 1.0)


def test_protected_layers_are_untouched():
    torch.manual_seed(0)
    model = ResidualNet().eval()
    x = torch.randn(2, 3, 8, 8)
    report = shrink(model, 0.5, example_inputs=(x,), protected=["fc"])
    assert model.fc.out_features == 16 and "fc" not in {s["module"] for s in report.history if s["dim"] == "out"}


def test_from_masks_removes_exactly_the_masked_rows(tiny_bert):
    inputs = _hf_inputs(tiny_bert)
    layer = tt.core.state.wrap(tiny_bert, "bert.encoder.layer.0.intermediate.dense")
    mask = torch.ones_like(layer.weight)
    mask[[3, 10, 11]] = 0
    layer.set_mask(mask)
    report = shrink(tiny_bert, from_masks=True, example_inputs=inputs)
    assert tiny_bert.bert.encoder.layer[0].intermediate.dense.weight.shape[0] == 61
    kept = {c.module: c.kept for c in report.layers}["bert.encoder.layer.0.intermediate.dense"]["out"]
    assert {3, 10, 11}.isdisjoint(kept) and len(kept) == 61


def test_from_masks_when_every_layer_is_row_pruned():
    """Consumers' own row masks do not hide a producer's dead rows (their columns stay unmasked)."""
    torch.manual_seed(0)
    model = ResidualNet().eval()
    x = torch.randn(2, 3, 8, 8)
    for name in ("branch_a", "fc"):
        layer = tt.core.state.wrap(model, name)
        mask = torch.ones_like(layer.weight)
        mask[:2] = 0  # rows 0 and 1
        layer.set_mask(mask)
    report = shrink(model, from_masks=True, example_inputs=(x,))
    kept = {c.module: c.kept for c in report.layers}
    assert kept["branch_a"]["out"] == [2, 3, 4, 5] and model.fc.weight.shape[0] == 14
    assert model.fuse.weight.shape[1] == 8  # reads 4 + 4 channels of the concatenation


def test_shrink_restates_the_pruning_record_in_new_positions(tiny_bert):
    from trimtune.core.masks import pruned_structures, record_pruned

    layer = tt.core.state.wrap(tiny_bert, "bert.encoder.layer.0.intermediate.dense")
    mask = torch.ones_like(layer.weight)
    mask[[3, 10]] = 0
    layer.set_mask(mask)
    record_pruned(layer, "out", [3, 10, 20])  # 20 recorded but not masked: it survives, at a new position
    shrink(tiny_bert, from_masks=True)
    assert pruned_structures(layer) == {"out": [18]}


def test_unstructured_masks_cannot_be_shrunk(tiny_bert):
    layer = tt.core.state.wrap(tiny_bert, "bert.encoder.layer.0.intermediate.dense")
    layer.set_mask((torch.rand_like(layer.weight) > 0.5).float())
    with pytest.raises(ValueError, match="no structure is entirely masked: shrink removes whole rows"):
        shrink(tiny_bert, from_masks=True)


def test_untraceable_model_names_the_op():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), dim=1))

    groups = find_groups(Odd(), example_inputs=(torch.randn(2, 4),))  # the op blocks its group, named
    reasons = {g.name: g.blocked for g in groups}
    assert "call_function" in reasons["a"] and "cumsum" in reasons["a"]
    with pytest.raises(ValueError, match=r"nothing can be shrunk: a \(its channels reach call_function .*cumsum"):
        shrink(Odd(), 0.5, example_inputs=(torch.randn(2, 4),))
    with pytest.raises(ValueError, match="pass example_inputs"):
        find_groups(Odd())


def test_an_untraceable_op_blocks_only_the_channels_that_reach_it():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.c(torch.cumsum(self.b(torch.relu(self.a(x))), dim=1))

    model, x = Mixed(), torch.randn(3, 4)
    shrink(model, 0.5, example_inputs=(x,))
    assert model.a.out_features == 4 and model.b.out_features == 6  # a's units go; b's feed cumsum and stay


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama", "tiny_gpt2"])
def test_save_and_reload_a_shrunk_transformer(fixture, request, tmp_path):
    from trimtune.shrinking import load_shrunk, save_shrunk

    model = request.getfixturevalue(fixture)
    inputs = _hf_inputs(model)
    # two shrinks, uneven across layers (layer 0 only for FFN), to need the recorded history
    shrink(model, 0.5, structures=("heads",))
    layer0 = {"bert": "bert.encoder.layer.0", "llama": "model.layers.0", "gpt2": "transformer.h.0"}[model.config.model_type]
    shrink(model, 0.25, structures=("ffn",), protected=lambda name, m: not name.startswith(layer0))
    expected = model(**inputs).logits
    save_shrunk(model, tmp_path / "shrunk")
    reloaded = load_shrunk(tmp_path / "shrunk").eval()
    torch.testing.assert_close(reloaded(**inputs).logits, expected)


def test_uniformly_shrunk_llama_reloads_with_plain_from_pretrained(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    from trimtune.shrinking import save_shrunk

    inputs = _hf_inputs(tiny_llama)
    shrink(tiny_llama, 0.5)
    save_shrunk(tiny_llama, tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(plain(**inputs).logits, tiny_llama(**inputs).logits)


def test_save_and_reload_a_shrunk_plain_module(tmp_path):
    from trimtune.shrinking import load_shrunk, save_shrunk

    torch.manual_seed(0)
    model = ResidualNet().eval()
    fresh = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    shrink(model, 0.5, example_inputs=(x,))
    with torch.no_grad():
        model.fc.weight.mul_(2)  # fine-tuned after the shrink: the file, not the replay, has the weights
    save_shrunk(model, tmp_path / "cnn")
    torch.testing.assert_close(load_shrunk(tmp_path / "cnn", model=fresh)(x), model(x))


def test_reload_errors_are_clear(tiny_bert, tmp_path):
    from trimtune.shrinking import load_shrunk, save_shrunk

    tiny_bert.save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="has no shrink_history.json: it was not saved by trimtune"):
        load_shrunk(tmp_path / "plain")
    with pytest.raises(ValueError, match="was not shrunk by trimtune"):
        save_shrunk(tiny_bert, tmp_path / "x")
    shrink(tiny_bert, 0.5)
    save_shrunk(tiny_bert, tmp_path / "s")
    (tmp_path / "s" / "shrink_history.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_shrunk(tmp_path / "s")


def _randomise_all_deltas(model):
    torch.manual_seed(9)
    with torch.no_grad():
        for _, layer in layers(model):
            for delta in layer.deltas.values():
                for param in delta.parameters():
                    param.add_(0.2 * torch.randn_like(param))


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(lambda: tt.IA3Config(), id="ia3"),
        pytest.param(lambda: tt.BottleneckConfig(placement="houlsby", reduction_factor=4), id="houlsby"),
    ],
)
@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama", "tiny_gpt2"])
def test_every_delta_type_is_sliced_with_the_base(fixture, config, request):
    model = request.getfixturevalue(fixture)
    tt.apply(model, config())
    _randomise_all_deltas(model)
    inputs = _hf_inputs(model)
    original = copy.deepcopy(model)
    report = shrink(model, 0.5, example_inputs=inputs)
    expected = _mask_form(original, report.history)(**inputs).logits
    torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


def test_an_unsliceable_delta_is_refused_before_anything_changes(tiny_bert):
    tt.apply(tiny_bert, tt.DiffConfig(penalty="l1"))
    before = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    with pytest.raises(ValueError, match=r"carries adapter 'default' \(DiffDelta\), which cannot be sliced.*nothing was changed"):
        shrink(tiny_bert, 0.5)
    after = tiny_bert.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_minilm_heads_and_ffn_with_lora_equal_mask_form(minilm_path):
    """The real all-MiniLM-L6-v2: 25 % of heads and FFN units out, a LoRA adapter carried along."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_path).eval()
    _lora_random(model, targets="query|value|dense")
    inputs = {"input_ids": torch.randint(1000, 5000, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    original = copy.deepcopy(model)
    report = shrink(model, 0.25, example_inputs=inputs)
    expected = _mask_form(original, report.history)(**inputs).last_hidden_state
    torch.testing.assert_close(model(**inputs).last_hidden_state, expected, atol=1e-5, rtol=1e-4)
    assert {w["heads"] for w in report.widths["layers"]} == {9} and {w["ffn"] for w in report.widths["layers"]} == {1152}
    assert report.macs_after < 0.8 * report.macs_before


def test_data_dependent_control_flow_says_what_to_do():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) if h.sum() > 0 else self.b(-h)

    with pytest.raises(UntraceableError, match="make the forward traceable") as err:
        find_groups(Branchy(), example_inputs=(torch.randn(2, 4),))
    assert "shrink_transformer" not in str(err.value)
