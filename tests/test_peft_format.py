"""PEFT-format adapter files, both directions, checked numerically against peft 0.21."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from safetensors.torch import load_file

import trimtune as tt
from trimtune.core.io.peft_format import PeftTargets


def randomise_trainable(model: torch.nn.Module, seed: int = 7) -> None:
    """Give every trainable tensor (LoRA A and B, head copies, trained biases) random values, so a
    tensor lost or misplaced on the way through a file changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def minilm_classifier(path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # the head is freshly initialised: same seed, same base
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=4).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------- trimtune writes, peft reads ----------

def test_minilm_saved_by_trimtune_loads_in_peft(minilm_path, token_ids, tmp_path):
    model = minilm_classifier(minilm_path)
    tt.apply(model, tt.LoraConfig(r=4, alpha=8, targets="query|value", modules_to_save=["classifier"]))
    randomise_trainable(model)
    tt.save_adapter(model, tmp_path / "a")
    peft_model = peft.PeftModel.from_pretrained(minilm_classifier(minilm_path), tmp_path / "a").eval()
    torch.testing.assert_close(logits(peft_model, token_ids), logits(model, token_ids), atol=1e-5, rtol=0)
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    keys = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert "base_model.model.classifier.weight" in keys
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in keys


def test_llama_saved_by_trimtune_loads_in_peft_and_generates_the_same(tiny_llama, token_ids, tmp_path):
    base = copy.deepcopy(tiny_llama)
    tt.apply(tiny_llama, tt.LoraConfig(r=4, alpha=16, use_rslora=True, rank_pattern={"v_proj": 2}, alpha_pattern={r"layers\.1\..*q_proj": 4}))
    randomise_trainable(tiny_llama)
    tt.save_adapter(tiny_llama, tmp_path)
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    torch.testing.assert_close(logits(peft_model, token_ids), logits(tiny_llama, token_ids), atol=1e-5, rtol=0)
    greedy = dict(max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(token_ids))
    ours = tiny_llama.generate(input_ids=token_ids, **greedy)
    assert torch.equal(peft_model.generate(input_ids=token_ids, **greedy), ours)
    assert ours.shape[1] == token_ids.shape[1] + 6


def test_gpt2_conv1d_and_embedding_saved_by_trimtune_load_in_peft(tiny_gpt2, token_ids, tmp_path):
    base = copy.deepcopy(tiny_gpt2)
    tt.apply(tiny_gpt2, tt.LoraConfig(r=4, alpha=8, targets=["c_attn", "wte"], bias="lora_only"))
    randomise_trainable(tiny_gpt2)
    tt.save_adapter(tiny_gpt2, tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.model.transformer.wte.lora_embedding_A" in keys
    assert "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias" in keys
    assert json.loads((tmp_path / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    torch.testing.assert_close(logits(peft_model, token_ids), logits(tiny_gpt2, token_ids), atol=1e-5, rtol=0)


# ---------- peft writes, trimtune reads ----------

def _peft_saved(model, config, path, ids):
    peft_model = peft.get_peft_model(model, config)
    randomise_trainable(peft_model)
    peft_model.eval()
    peft_model.save_pretrained(path)
    return logits(peft_model, ids), peft_model


def test_minilm_saved_by_peft_loads_in_trimtune(minilm_path, token_ids, tmp_path):
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    expected, _ = _peft_saved(minilm_classifier(minilm_path), config, tmp_path, token_ids)
    model = minilm_classifier(minilm_path)
    loaded = tt.load_adapter(model, tmp_path)
    assert loaded.modules_to_save == ["classifier"]  # peft also lists "score", absent from BERT
    torch.testing.assert_close(logits(model, token_ids), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "options",
    [
        dict(target_modules=["q_proj", "v_proj"], use_rslora=True, bias="lora_only"),
        dict(target_modules=r".*\.layers\.0\.self_attn\.(q|k)_proj", rank_pattern={"k_proj": 2}, alpha_pattern={"q_proj": 3}),
        dict(target_modules="all-linear", bias="all"),
        dict(target_modules=["q_proj", "v_proj", "up_proj"], layers_to_transform=[1], exclude_modules=["v_proj"]),
        dict(target_modules=["k_proj", "down_proj"], layers_to_transform=0, layers_pattern="layers"),
    ],
    ids=["rslora-lora_only", "regex-patterns", "all-linear-bias_all", "layers-exclude", "layer-int-pattern"],
)
def test_llama_saved_by_peft_loads_in_trimtune(tiny_llama, token_ids, tmp_path, options):
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, **options)
    expected, peft_model = _peft_saved(copy.deepcopy(tiny_llama), config, tmp_path, token_ids)
    tt.load_adapter(tiny_llama, tmp_path)
    assert list(tt.core.state.layers(tiny_llama))  # something was loaded, and exactly where peft put it:
    assert sorted(n for n, _ in tt.core.state.layers(tiny_llama)) == sorted(
        n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)
    )
    torch.testing.assert_close(logits(tiny_llama, token_ids), expected, atol=1e-5, rtol=0)
    greedy = dict(max_new_tokens=5, do_sample=False, attention_mask=torch.ones_like(token_ids))
    assert torch.equal(tiny_llama.generate(input_ids=token_ids, **greedy), peft_model.generate(input_ids=token_ids, **greedy))


def test_gpt2_saved_by_peft_loads_in_trimtune(tiny_gpt2, token_ids, tmp_path):
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["c_attn", "wte"], fan_in_fan_out=True)
    expected, _ = _peft_saved(copy.deepcopy(tiny_gpt2), config, tmp_path, token_ids)
    tt.load_adapter(tiny_gpt2, tmp_path)
    torch.testing.assert_close(logits(tiny_gpt2, token_ids), expected, atol=1e-5, rtol=0)


def test_bias_all_with_a_head_copy_both_directions(tiny_bert, token_ids, tmp_path, recwarn):
    base = copy.deepcopy(tiny_bert)
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"], bias="all")
    expected, _ = _peft_saved(copy.deepcopy(base), config, tmp_path / "peft", token_ids)
    model = copy.deepcopy(base)
    tt.load_adapter(model, tmp_path / "peft")
    torch.testing.assert_close(logits(model, token_ids), expected, atol=1e-5, rtol=0)
    assert not [w for w in recwarn if "ignored" in str(w.message)]  # peft's internal head duplicates skipped quietly

    tt.apply(tiny_bert, tt.LoraConfig(r=4, targets=["query", "value"], bias="all", modules_to_save=["classifier"]))
    randomise_trainable(tiny_bert)
    tt.save_adapter(tiny_bert, tmp_path / "ours")
    assert "base_model.model.bert.encoder.layer.0.output.dense.bias" in load_file(tmp_path / "ours" / "adapter_model.safetensors")
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    torch.testing.assert_close(logits(peft_model, token_ids), logits(tiny_bert, token_ids), atol=1e-5, rtol=0)


# ---------- several adapters, round trips ----------

def test_named_adapters_are_saved_and_loaded_separately(tiny_bert, token_ids, tmp_path):
    base = copy.deepcopy(tiny_bert)
    tt.apply(tiny_bert, tt.LoraConfig(r=2, targets="query", modules_to_save=["classifier"]), name="one")
    tt.apply(tiny_bert, tt.LoraConfig(r=4, alpha=4, targets=["value", "key"]), name="two")
    outputs = {}
    for name in ("one", "two"):
        tt.set_adapter(tiny_bert, name)
        randomise_trainable(tiny_bert, seed=len(name) + (name == "two"))
        outputs[name] = logits(tiny_bert, token_ids)
        tt.save_adapter(tiny_bert, tmp_path / name, name=name)
    assert not torch.allclose(outputs["one"], outputs["two"])
    fresh = copy.deepcopy(base)
    tt.load_adapter(fresh, tmp_path / "two", name="two")
    tt.load_adapter(fresh, tmp_path / "one", name="one")  # the last loaded is active
    torch.testing.assert_close(logits(fresh, token_ids), outputs["one"], atol=1e-6, rtol=0)
    tt.set_adapter(fresh, "two")
    torch.testing.assert_close(logits(fresh, token_ids), outputs["two"], atol=1e-6, rtol=0)
    assert tt.adapter_config(fresh, "two").targets == ["value", "key"]
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "two").eval()
    torch.testing.assert_close(logits(peft_model, token_ids), outputs["two"], atol=1e-5, rtol=0)


def test_peft_regex_target_survives_a_round_trip(tiny_llama, tmp_path):
    pattern = r".*\.layers\.1\.self_attn\.v_proj"
    peft.get_peft_model(copy.deepcopy(tiny_llama), peft.LoraConfig(r=2, target_modules=pattern)).save_pretrained(tmp_path / "p")
    config = tt.load_adapter(tiny_llama, tmp_path / "p")
    assert config.targets == PeftTargets(pattern)
    assert [n for n, _ in tt.core.state.layers(tiny_llama)] == ["model.layers.1.self_attn.v_proj"]
    tt.save_adapter(tiny_llama, tmp_path / "t")
    assert json.loads((tmp_path / "t" / "adapter_config.json").read_text())["target_modules"] == pattern


def test_trimtune_regex_means_the_same_in_peft(tiny_bert, tmp_path):
    base = copy.deepcopy(tiny_bert)
    tt.apply(tiny_bert, tt.LoraConfig(r=2, targets=r"layer\.1\..*(query|value)"))
    tt.save_adapter(tiny_bert, tmp_path)
    ours = sorted(n for n, _ in tt.core.state.layers(tiny_bert))
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path)
    theirs = sorted(n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer))
    assert ours == theirs == ["bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"]


# ---------- bad input ----------

@pytest.fixture
def saved_bert_adapter(tiny_bert, tmp_path):
    """A trimtune adapter directory for ``tiny_bert`` (the fixture model is left without adapters)."""
    model = copy.deepcopy(tiny_bert)
    tt.apply(model, tt.LoraConfig(r=2, targets=["query", "value"]))
    randomise_trainable(model)
    return tt.save_adapter(model, tmp_path / "adapter")


def test_missing_directory_and_files_are_named(tiny_bert, saved_bert_adapter, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tt.load_adapter(tiny_bert, tmp_path / "nowhere")
    (saved_bert_adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors is missing"):
        tt.load_adapter(tiny_bert, saved_bert_adapter)
    (saved_bert_adapter / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        tt.load_adapter(tiny_bert, saved_bert_adapter)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors_is_a_clear_error(tiny_bert, saved_bert_adapter, damage):
    file = saved_bert_adapter / "adapter_model.safetensors"
    data = file.read_bytes()
    file.write_bytes(b"\x00\x01not safetensors" if damage == "garbage" else data[: len(data) - 40])
    with pytest.raises(tt.FormatError, match="is not a readable"):
        tt.load_adapter(tiny_bert, saved_bert_adapter)
    assert tt.core.state.state_of(tiny_bert).adapters == {}


def test_bad_json_and_unknown_peft_type(tiny_bert, saved_bert_adapter):
    config_file = saved_bert_adapter / "adapter_config.json"
    good = json.loads(config_file.read_text())
    config_file.write_text('{"peft_type": "LORA", "r": 4,')
    with pytest.raises(tt.FormatError, match="not valid JSON"):
        tt.load_adapter(tiny_bert, saved_bert_adapter)
    config_file.write_text(json.dumps({**good, "peft_type": "C3A"}))  # a peft method trimtune does not have
    with pytest.raises(tt.FormatError, match="peft_type 'C3A'.*LORA"):
        tt.load_adapter(tiny_bert, saved_bert_adapter)
    config_file.write_text(json.dumps({k: v for k, v in good.items() if k != "peft_type"}))
    with pytest.raises(tt.FormatError, match="no peft_type"):
        tt.load_adapter(tiny_bert, saved_bert_adapter)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("layer_replication", [[0, 2]], "layer_replication"),
        ("lora_bias", True, "lora_bias=True"),
        ("init_lora_weights", "pissa", "changes the base model"),
        ("r", 0, "r must be an integer >= 1"),
    ],
)
def test_unsupported_peft_fields_are_refused(tiny_bert, saved_bert_adapter, field, value, message):
    config_file = saved_bert_adapter / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), field: value}))
    with pytest.raises(tt.ConfigError, match=message):
        tt.load_adapter(tiny_bert, saved_bert_adapter)


def test_use_dora_reads_as_dora_which_needs_the_magnitude_tensors(tiny_bert, saved_bert_adapter):
    # use_dora=True is no longer refused: the file is DoRA's, and a LoRA file marked so lacks its magnitudes.
    config_file = saved_bert_adapter / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "use_dora": True}))
    with pytest.raises(tt.FormatError, match=r"lacks 4 tensor\(s\).*lora_magnitude_vector"):
        tt.load_adapter(tiny_bert, saved_bert_adapter)
    assert tt.active_adapters(tiny_bert) == []  # nothing half-loaded


def test_shapes_that_do_not_fit_name_the_tensor_and_both_shapes(tiny_bert, saved_bert_adapter):
    config_file = saved_bert_adapter / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "r": 3}))
    tt.apply(tiny_bert, tt.LoraConfig(r=2, targets="key"), name="other")
    with pytest.raises(tt.FormatError, match=r"lora_A.weight in .* has shape \(2, 32\) but the model needs \(3, 32\)"):
        tt.load_adapter(tiny_bert, saved_bert_adapter)
    assert list(tt.core.state.state_of(tiny_bert).adapters) == ["other"]  # nothing half-loaded left behind
    assert tt.active_adapters(tiny_bert) == ["other"]


def test_adapter_for_another_layout_lacks_tensors(tiny_gpt2, saved_bert_adapter):
    config_file = saved_bert_adapter / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "target_modules": ["c_attn"]}))
    with pytest.raises(tt.FormatError, match="lacks 4 tensor"):
        tt.load_adapter(tiny_gpt2, saved_bert_adapter, check_base=False)


def test_loading_an_existing_name_and_saving_an_unknown_one(tiny_bert, saved_bert_adapter, tmp_path):
    tt.load_adapter(tiny_bert, saved_bert_adapter, name="task")
    with pytest.raises(ValueError, match="already has an adapter named 'task'"):
        tt.load_adapter(tiny_bert, saved_bert_adapter, name="task")
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        tt.save_adapter(tiny_bert, tmp_path / "x", name="nope")
    assert not (tmp_path / "x").exists()


def test_prompt_methods_use_the_same_entry_points(tiny_llama, token_ids, tmp_path):
    base = copy.deepcopy(tiny_llama)
    tt.apply(tiny_llama, tt.PromptTuningConfig(num_virtual_tokens=3))
    randomise_trainable(tiny_llama)
    tt.save_adapter(tiny_llama, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    assert isinstance(tt.load_adapter(base, tmp_path), tt.PromptTuningConfig)
    torch.testing.assert_close(logits(base, token_ids), logits(tiny_llama, token_ids), atol=1e-6, rtol=0)


def _tiny_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3), torch.nn.Flatten(), torch.nn.Linear(6 * 6 * 6, 10)
    ).eval()


def test_conv2d_lora_both_directions(tmp_path):
    """Plain torch models (no HF config) and convolutions use the same mapping."""
    images = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = _tiny_cnn()
    tt.apply(model, tt.LoraConfig(r=2, targets=["0", "2"], modules_to_save=["4"]))
    randomise_trainable(model)
    tt.save_adapter(model, tmp_path / "ours")
    peft_model = peft.PeftModel.from_pretrained(_tiny_cnn(), tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(images), model(images), atol=1e-5, rtol=0)

    peft_model = peft.get_peft_model(_tiny_cnn(), peft.LoraConfig(r=3, lora_alpha=6, target_modules=["2"]))
    randomise_trainable(peft_model)
    peft_model.save_pretrained(tmp_path / "theirs")
    fresh = _tiny_cnn()
    tt.load_adapter(fresh, tmp_path / "theirs")
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), peft_model.eval()(images), atol=1e-5, rtol=0)


def test_saving_with_a_merged_adapter_is_refused_clearly(tiny_bert, tmp_path):
    tt.apply(tiny_bert, tt.LoraConfig(r=2, targets="query"))
    tt.merge(tiny_bert)
    with pytest.raises(ValueError, match="merged into the base weights.*unmerge"):
        tt.save_adapter(tiny_bert, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    tt.unmerge(tiny_bert)
    tt.save_adapter(tiny_bert, tmp_path / "a")


def test_a_delta_can_leave_entries_out_of_peft_files():
    from trimtune.methods.lora.delta import LoraDelta

    class WithCounter(LoraDelta):
        def __init__(self, *args):
            super().__init__(*args)
            self.register_buffer("steps", torch.zeros(()))

        def peft_key(self, key):
            return None if key == "steps" else super().peft_key(key)

    layer = tt.TunedLayer(torch.nn.Linear(4, 3))
    layer.add_delta("default", WithCounter(layer.kind, layer.weight, 2, 1.0))
    tensors = layer.peft_tensors("default", "base_model.model.fc")
    assert sorted(tensors) == ["base_model.model.fc.lora_A.weight", "base_model.model.fc.lora_B.weight"]
    assert tensors["base_model.model.fc.lora_A.weight"] is layer.deltas["default"].lora_A  # live, for loading


def test_layer_selection_is_saved_back_as_the_exact_layers(tiny_llama, tmp_path):
    options = dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[1], exclude_modules=["v_proj"])
    base = copy.deepcopy(tiny_llama)
    peft.get_peft_model(copy.deepcopy(tiny_llama), peft.LoraConfig(r=2, **options)).save_pretrained(tmp_path / "p")
    tt.load_adapter(tiny_llama, tmp_path / "p")
    tt.save_adapter(tiny_llama, tmp_path / "t")
    assert json.loads((tmp_path / "t" / "adapter_config.json").read_text())["target_modules"] == ["model.layers.1.self_attn.q_proj"]
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "t")
    assert [n for n, m in peft_model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)] == [
        "base_model.model.model.layers.1.self_attn.q_proj"
    ]
