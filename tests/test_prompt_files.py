"""PEFT-format files for prompt methods: ours load in peft, peft's load in trimtune, same outputs."""

import copy
import json

import peft
import pytest
import torch
from prompt_twins import generate, padded, with_adapter

import trimtune as tt

METHODS = {
    "prompt": (tt.PromptTuningConfig(num_virtual_tokens=4), (peft.PromptTuningConfig, dict(num_virtual_tokens=4))),
    "p_mlp": (tt.PTuningConfig(num_virtual_tokens=3, encoder_hidden_size=16),
              (peft.PromptEncoderConfig, dict(num_virtual_tokens=3, encoder_hidden_size=16))),
    "p_lstm": (tt.PTuningConfig(num_virtual_tokens=3, encoder="LSTM", encoder_hidden_size=8),
               (peft.PromptEncoderConfig, dict(num_virtual_tokens=3, encoder_reparameterization_type="LSTM", encoder_hidden_size=8))),
    "prefix": (tt.PrefixTuningConfig(num_virtual_tokens=3), (peft.PrefixTuningConfig, dict(num_virtual_tokens=3))),
    "prefix_mlp": (tt.PrefixTuningConfig(num_virtual_tokens=3, projection=True, encoder_hidden_size=16),
                   (peft.PrefixTuningConfig, dict(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=16))),
    # TEXT init changes only the start: the file is an ordinary prefix file (ids valid in every test vocabulary)
    "prefix_text": (tt.PrefixTuningConfig(num_virtual_tokens=3, init="TEXT", init_text="x", tokenizer=lambda text, **kw: {"input_ids": [5, 7]}),
                    (peft.PrefixTuningConfig, dict(num_virtual_tokens=3))),
    "prefix_mlp_text": (tt.PrefixTuningConfig(num_virtual_tokens=3, projection=True, encoder_hidden_size=16, init="TEXT",
                                              init_text="x", tokenizer=lambda text, **kw: {"input_ids": [5, 7]}),
                        (peft.PrefixTuningConfig, dict(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=16))),
}


def peft_config(method, task):
    config_class, fields = METHODS[method][1]
    return config_class(task_type=task, **fields)


@pytest.fixture(scope="module")
def minilm(minilm_path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=4).eval()


@pytest.fixture(scope="module")
def minilm_batch(minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    return tokenizer(["a fine movie", "the plot was slow and the acting worse"], padding=True, return_tensors="pt")


def _randomise_head(model, name="default"):
    with torch.no_grad():
        for param in model.classifier.copies[name].parameters():
            param.normal_()


@pytest.mark.parametrize("method", list(METHODS))
def test_minilm_classification_both_directions(method, minilm, minilm_batch, tmp_path):
    config = copy.deepcopy(METHODS[method][0])
    config.modules_to_save = ["classifier"]
    ours = with_adapter(minilm, config)
    _randomise_head(ours)
    tt.save_adapter(ours, tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and saved["peft_type"] == config.peft_type
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(minilm), tmp_path / "ours").eval()
    with torch.no_grad():
        expected = ours(**minilm_batch).logits
        torch.testing.assert_close(theirs(**minilm_batch).logits, expected, atol=1e-5, rtol=0)
        assert not torch.allclose(expected, minilm(**minilm_batch).logits, atol=1e-3)

    made_by_peft = peft.get_peft_model(copy.deepcopy(minilm), peft_config(method, "SEQ_CLS")).eval()
    with torch.no_grad():
        for param in made_by_peft.prompt_encoder.parameters():
            param.add_(torch.randn_like(param) * 0.1)  # make the peft adapter distinct from ours
        for param in made_by_peft.base_model.classifier.modules_to_save["default"].parameters():
            param.normal_()
    made_by_peft.save_pretrained(tmp_path / "peft")
    loaded = copy.deepcopy(minilm)
    tt.load_adapter(loaded, tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**minilm_batch).logits, made_by_peft(**minilm_batch).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("method", ["prompt", "p_lstm", "prefix", "prefix_mlp", "prefix_text", "prefix_mlp_text"])
def test_decoders_both_directions_logits_and_greedy_tokens(fixture, method, request, token_ids, tmp_path):
    base = request.getfixturevalue(fixture)
    mask = padded(token_ids)
    ours = with_adapter(base, METHODS[method][0])
    tt.save_adapter(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(input_ids=token_ids, attention_mask=mask).logits, ours(input_ids=token_ids, attention_mask=mask).logits,
            atol=1e-5, rtol=0,
        )
    assert torch.equal(generate(theirs, token_ids, mask), generate(ours, token_ids, mask))

    made_by_peft = peft.get_peft_model(copy.deepcopy(base), peft_config(method, "CAUSAL_LM")).eval()
    made_by_peft.save_pretrained(tmp_path / "peft")
    loaded = copy.deepcopy(base)
    assert isinstance(tt.load_adapter(loaded, tmp_path / "peft", name="from_peft"), type(METHODS[method][0]))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=token_ids, attention_mask=mask).logits,
            made_by_peft(input_ids=token_ids, attention_mask=mask).logits, atol=1e-5, rtol=0,
        )
    assert torch.equal(generate(loaded, token_ids, mask), generate(made_by_peft, token_ids, mask))


def test_bad_files_are_refused_clearly(tiny_llama, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        tt.load_adapter(tiny_llama, tmp_path / "missing")
    ours = with_adapter(tiny_llama, tt.PromptTuningConfig(num_virtual_tokens=4))
    tt.save_adapter(ours, tmp_path / "a")
    config_file = tmp_path / "a" / "adapter_config.json"
    fields = json.loads(config_file.read_text())

    config_file.write_text(json.dumps({**fields, "num_virtual_tokens": 5}))
    with pytest.raises(ValueError, match=r"prompt_embeddings.*\(4, 32\).*\(5, 32\)"):
        tt.load_adapter(copy.deepcopy(tiny_llama), tmp_path / "a")
    config_file.write_text(json.dumps({**fields, "peft_type": "WHATEVER"}))
    with pytest.raises(ValueError, match="WHATEVER"):
        tt.load_adapter(copy.deepcopy(tiny_llama), tmp_path / "a")
    config_file.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        tt.load_adapter(copy.deepcopy(tiny_llama), tmp_path / "a")


def test_a_failed_load_leaves_no_adapter_behind(tiny_llama, tmp_path):
    ours = with_adapter(tiny_llama, tt.PromptTuningConfig(num_virtual_tokens=4))
    tt.save_adapter(ours, tmp_path / "a")
    fields = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**fields, "num_virtual_tokens": 2}))
    target = copy.deepcopy(tiny_llama)
    with pytest.raises(ValueError):
        tt.load_adapter(target, tmp_path / "a")
    assert tt.core.state.state_of(target).adapters == {} and not target.trimtune_prompts.adapter_names()


def test_loading_onto_another_base_is_refused_unless_told(tiny_llama, tmp_path):
    ours = with_adapter(tiny_llama, tt.PrefixTuningConfig(num_virtual_tokens=2))
    tt.save_adapter(ours, tmp_path / "a")
    other = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        for param in other.parameters():
            param.normal_()
    with pytest.raises(tt.BaseMismatchError):
        tt.load_adapter(other, tmp_path / "a")
    assert tt.core.state.state_of(other).adapters == {}
    tt.load_adapter(other, tmp_path / "a", check_base=False, activate=True)
    assert tt.active_adapters(other) == ["default"]


def test_trimtune_round_trip_of_one_named_adapter_among_several(tiny_gpt2, token_ids, tmp_path):
    model = with_adapter(tiny_gpt2, tt.PTuningConfig(num_virtual_tokens=2), name="a")
    tt.apply(model, tt.PrefixTuningConfig(num_virtual_tokens=3, projection=True), name="b")
    tt.apply(model, tt.LoraConfig(r=2), name="c")
    tt.set_adapter(model, "b")
    tt.save_adapter(model, tmp_path / "b", name="b")
    with torch.no_grad():
        expected = model(token_ids).logits
    fresh = copy.deepcopy(tiny_gpt2)
    tt.load_adapter(fresh, tmp_path / "b", name="b")
    assert tt.trainable_parameters(fresh)[0] == 3 * 2 * 2 * 32  # the folded table only
    with torch.no_grad():
        torch.testing.assert_close(fresh(token_ids).logits, expected, atol=1e-6, rtol=0)
