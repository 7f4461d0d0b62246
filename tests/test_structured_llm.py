"""Structured LLM shrinking (prune/structured): fewer heads, FFN channels, hidden channels and
blocks, chosen from calibration activations, repaired, and written as a plain HF directory."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from trimtune.core.config import ConfigError
from trimtune.prune.structured import StructuredConfig, shrink_llm, shrink_llm_directory
from trimtune.prune.structured.repair import refit


def llama(tied=True, layers=4, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=8,
                         num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied)
    return LlamaForCausalLM(config).eval()


def gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=4, n_head=4, n_positions=64)).eval()


def twin(model):
    other = type(model)(model.config).eval()
    other.load_state_dict(model.state_dict())
    return other


SAMPLES = torch.randint(0, 128, (6, 16), generator=torch.Generator().manual_seed(1))


def block_inputs(model, index, module_path):
    """The dense model's input to ``blocks[index].<module_path>`` on SAMPLES, one row per token."""
    seen = []
    module = model.model.layers[index].get_submodule(module_path)
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for row in SAMPLES:
            model(row[None])
    handle.remove()
    return torch.cat(seen)


@pytest.mark.parametrize("config", [
    StructuredConfig(heads=0.5, ffn=0.25),
    StructuredConfig(heads=0.5, ffn=0.25, hidden=0.25, drop_layers=1, gqa="query", importance="wanda", repair="bias"),
    StructuredConfig(ffn=0.5, drop_layers=2, depth_metric="angular", importance="activation", repair="none"),
])
def test_shrunk_model_saves_as_a_plain_directory_that_reloads_and_generates(tmp_path, config):
    model = llama()
    report = shrink_llm(model, SAMPLES, config)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(SAMPLES).logits, model(SAMPLES).logits)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_hidden_layers"] == 4 - config.drop_layers
    assert saved["hidden_size"] == 64 - round(64 * config.hidden)
    assert saved["intermediate_size"] == 96 - round(96 * config.ffn)
    assert saved["num_attention_heads"] % saved["num_key_value_heads"] == 0
    assert again.generate(SAMPLES[:1, :4], max_new_tokens=5, do_sample=False).shape == (1, 9)
    assert report.parameters_after["total"] == sum(p.numel() for p in again.parameters())
    assert 0 < report.removed_fraction < 1


def test_gqa_modes_keep_heads_divisible():
    kv = llama()
    shrink_llm(kv, SAMPLES, StructuredConfig(heads=0.5, gqa="kv"))
    assert (kv.config.num_attention_heads, kv.config.num_key_value_heads) == (4, 1)
    query = llama()
    report = shrink_llm(query, SAMPLES, StructuredConfig(heads=0.5, gqa="query"))
    assert (query.config.num_attention_heads, query.config.num_key_value_heads) == (4, 2)
    for change in report.blocks:  # two of the four query heads of each KV group
        assert sum(h < 4 for h in change["heads_removed"]) == 2 and change["kv_heads_removed"] == []


def test_ffn_channels_go_by_flap_fluctuation_on_the_dense_inputs_of_block_0():
    model = llama()
    x = block_inputs(model, 0, "mlp.down_proj")
    weight = model.model.layers[0].mlp.down_proj.weight
    score = x.var(0, unbiased=False) * weight.square().sum(0)
    expected = sorted(torch.sort(score, stable=True).indices[:24].tolist())
    report = shrink_llm(twin(model), SAMPLES, StructuredConfig(ffn=0.25, importance="fluctuation", repair="none"))
    assert report.blocks[0]["ffn_removed"] == expected


def test_round_to_keeps_widths_aligned_and_the_best_scored_channels():
    model = llama()  # FFN 96, hidden 64
    plain = shrink_llm(twin(model), SAMPLES, StructuredConfig(ffn=0.3, hidden=0.2, importance="fluctuation", repair="none"))
    rounded = shrink_llm(twin(model), SAMPLES, StructuredConfig(ffn=0.3, hidden=0.2, importance="fluctuation", repair="none", round_to=16))
    assert (plain.after["intermediate_size"], plain.after["hidden_size"]) == (67, 51)  # 96 - round(28.8), 64 - round(12.8)
    assert (rounded.after["intermediate_size"], rounded.after["hidden_size"]) == (64, 48)  # the nearest multiples of 16
    plain, rounded = (shrink_llm(twin(model), SAMPLES, StructuredConfig(ffn=0.3, importance="fluctuation", repair="none", round_to=n))
                      for n in (1, 16))
    kept_plain = set(range(96)) - set(plain.blocks[0]["ffn_removed"])
    kept_rounded = set(range(96)) - set(rounded.blocks[0]["ffn_removed"])
    assert len(kept_rounded) == 64 and kept_rounded < kept_plain  # the same ranking, cut at the aligned width
    with pytest.raises(ConfigError, match="round_to 128 is more than the 96 there are"):
        shrink_llm(twin(model), SAMPLES, StructuredConfig(ffn=0.3, round_to=128))
    with pytest.raises(ConfigError, match="round_to"):
        StructuredConfig(ffn=0.3, round_to=0)


def test_least_squares_repair_is_the_damped_normal_equations_and_beats_no_repair():
    model = llama()
    x = block_inputs(model, 0, "mlp.down_proj")
    weight = model.model.layers[0].mlp.down_proj.weight.detach()
    target = x @ weight.t()
    keep = torch.arange(0, 96, 2)
    moment = x.t() @ x / x.shape[0]
    fitted = refit(weight, moment, keep, percdamp=0.0)
    solution = torch.linalg.lstsq(x[:, keep].double(), target.double()).solution.t().float()
    assert torch.allclose(fitted, solution, atol=1e-4)
    repaired_error = (x[:, keep] @ fitted.t() - target).square().sum()
    plain_error = (x[:, keep] @ weight[:, keep].t() - target).square().sum()
    assert repaired_error < 0.9 * plain_error
    # in the pipeline: block 0's FFN output on calibration tokens is closer to the dense one with repair
    errors = {}
    for how in ("none", "lstsq", "bias"):
        shrunk = twin(model)
        shrink_llm(shrunk, SAMPLES, StructuredConfig(ffn=0.5, repair=how))
        errors[how] = (block_inputs(shrunk, 0, "mlp.down_proj") @ shrunk.model.layers[0].mlp.down_proj.weight.t()
                       + (shrunk.model.layers[0].mlp.down_proj.bias if how == "bias" else 0) - target).square().sum()
    assert errors["lstsq"] < errors["none"] and errors["bias"] < errors["none"]


def test_bias_compensation_keeps_the_mean_output():
    model = llama()
    x = block_inputs(model, 0, "mlp.down_proj")
    dense_mean = (x @ model.model.layers[0].mlp.down_proj.weight.t()).mean(0)
    shrunk = twin(model)
    shrink_llm(shrunk, SAMPLES, StructuredConfig(ffn=0.5, repair="bias"))
    down = shrunk.model.layers[0].mlp.down_proj
    after = F.linear(block_inputs(shrunk, 0, "mlp.down_proj"), down.weight, down.bias).mean(0)
    assert torch.allclose(after, dense_mean, atol=1e-5)
    assert shrunk.config.mlp_bias is True


def test_block_influence_and_angular_distance_match_hand_computation():
    model = llama(layers=6)
    with torch.no_grad():
        states = [torch.cat(s) for s in zip(*[model(row[None], output_hidden_states=True).hidden_states for row in SAMPLES])]
    # hidden_states[-1] has the final norm applied; block outputs come from hooks instead
    outs = []
    handles = [b.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o)) for b in model.model.layers]
    with torch.no_grad():
        for row in SAMPLES:
            model(row[None])
    for h in handles:
        h.remove()
    per_block = [torch.cat(outs[i::6]).reshape(-1, 64) for i in range(6)]
    inputs = [states[0].reshape(-1, 64)] + per_block[:-1]
    influence = [float((1 - F.cosine_similarity(a, b, dim=-1)).mean()) for a, b in zip(inputs, per_block)]
    report = shrink_llm(twin(model), SAMPLES, StructuredConfig(drop_layers=2))
    assert report.scores["block_influence"] == pytest.approx(influence, rel=1e-4)
    assert report.dropped_blocks == sorted(torch.tensor(influence).argsort()[:2].tolist())
    boundaries = [inputs[0]] + per_block
    distances = [float(torch.arccos(F.cosine_similarity(boundaries[s], boundaries[s + 2], dim=-1).clamp(-1, 1)).mean())
                 for s in range(5)]
    angular = shrink_llm(twin(model), SAMPLES, StructuredConfig(drop_layers=2, depth_metric="angular"))
    start = angular.dropped_blocks[0]
    assert angular.dropped_blocks == [start, start + 1]
    assert distances[start] <= min(distances) + 0.02  # sampled rows, not every token: near the hand minimum


@pytest.mark.parametrize("tied", [True, False])
def test_streamed_shrink_equals_in_memory(tmp_path, tied):
    model = llama(tied=tied)
    model.save_pretrained(tmp_path / "dense", max_shard_size="100KB")
    config = StructuredConfig(heads=0.25, ffn=0.25, hidden=0.25, drop_layers=1)
    report = shrink_llm_directory(tmp_path / "dense", tmp_path / "small", SAMPLES, config)
    in_memory = twin(model)
    shrink_llm(in_memory, SAMPLES, config)
    streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    with torch.no_grad():
        assert torch.equal(streamed(SAMPLES).logits, in_memory(SAMPLES).logits)
    assert json.loads((tmp_path / "small" / "shrink_report.json").read_text())["dropped_blocks"] == report.dropped_blocks
    assert json.loads((tmp_path / "small" / "pruned_from.json").read_text())["source"] == str((tmp_path / "dense").resolve())


def test_gpt2_ffn_and_depth_streamed(tmp_path):
    model = gpt2()
    model.save_pretrained(tmp_path / "dense")
    shrink_llm_directory(tmp_path / "dense", tmp_path / "small", SAMPLES, StructuredConfig(ffn=0.5, drop_layers=1))
    small = GPT2LMHeadModel.from_pretrained(tmp_path / "small")
    assert small.config.n_layer == 3 and small.config.n_inner == 64
    assert small.generate(SAMPLES[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_qwen2_heads_keep_their_qkv_biases():
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)).eval()
    shrink_llm(model, SAMPLES, StructuredConfig(heads=0.5))
    assert model.model.layers[0].self_attn.q_proj.bias.shape == (32,)
    with torch.no_grad():
        assert torch.isfinite(model(SAMPLES).logits).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"heads": 1.0}, "heads must be a fraction in [0, 1)"),
    ({"ffn": -0.1}, "ffn must be a fraction"),
    ({}, "nothing to remove"),
    ({"drop_layers": -1}, "drop_layers must be an integer"),
    ({"ffn": 0.1, "importance": "taylor"}, "importance must be one of"),
])
def test_bad_configs_name_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        StructuredConfig(**kwargs)


@pytest.mark.parametrize("make, config, message", [
    (llama, StructuredConfig(heads=0.9), "would leave none"),
    (llama, StructuredConfig(heads=0.9, gqa="query"), "would leave none"),
    (llama, StructuredConfig(drop_layers=4), "every one of the model's 4 blocks"),
    (gpt2, StructuredConfig(heads=0.25), "cannot be written as a plain directory"),
    (gpt2, StructuredConfig(hidden=0.25), "cannot be written as a plain directory"),
])
def test_impossible_plans_are_refused_before_the_model_changes(make, config, message):
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=message):
        shrink_llm(model, SAMPLES, config)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_streamed_refusals_write_nothing_and_leave_the_input(tmp_path):
    model = llama()
    dense = tmp_path / "dense"
    model.save_pretrained(dense)
    listing = sorted(p.name for p in dense.iterdir())
    config = StructuredConfig(ffn=0.25)
    with pytest.raises(ValueError, match="is, or is inside, the input model directory"):
        shrink_llm_directory(dense, dense, SAMPLES, config)
    with pytest.raises(ValueError, match="is, or is inside, the input model directory"):
        shrink_llm_directory(dense, dense / "small", SAMPLES, config)
    with pytest.raises(ConfigError, match="would leave none"):
        shrink_llm_directory(dense, tmp_path / "small", SAMPLES, StructuredConfig(heads=0.95))
    assert sorted(p.name for p in dense.iterdir()) == listing
    assert not (tmp_path / "small").exists() and not list(tmp_path.glob(".small*"))
