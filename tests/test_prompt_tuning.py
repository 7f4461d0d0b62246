import peft
import pytest
import torch
from prompt_twins import delta_of, generate, padded, peft_twin, with_adapter
from torch import nn

import trimtune as tt


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_decoder_forward_and_generate_match_peft(fixture, request, token_ids):
    base = request.getfixturevalue(fixture)
    ours = with_adapter(base, tt.PromptTuningConfig(num_virtual_tokens=4))
    twin = peft_twin(base, ours, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    mask = padded(token_ids)
    with torch.no_grad():
        logits = ours(input_ids=token_ids, attention_mask=mask).logits
        assert logits.shape == (2, 4 + 9, 100)
        torch.testing.assert_close(logits, twin(input_ids=token_ids, attention_mask=mask).logits, atol=1e-5, rtol=0)
        plain = base(input_ids=token_ids, attention_mask=mask).logits
    assert not torch.allclose(logits[:, 4:], plain, atol=1e-3)  # the prompt changes the output
    out = generate(ours, token_ids, mask)
    assert out.shape == (2, 9 + 5) and torch.equal(out[:, :9], token_ids)  # virtual tokens not returned
    assert torch.equal(out, generate(twin, token_ids, mask))
    assert torch.equal(generate(ours, token_ids, mask, sample=True), generate(twin, token_ids, mask, sample=True))


def test_lm_loss_ignores_virtual_positions_like_peft(tiny_llama, token_ids):
    ours = with_adapter(tiny_llama, tt.PromptTuningConfig(num_virtual_tokens=3))
    twin = peft_twin(tiny_llama, ours, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with torch.no_grad():
        loss = ours(input_ids=token_ids, labels=token_ids).loss
        torch.testing.assert_close(loss, twin(input_ids=token_ids, labels=token_ids).loss, atol=1e-6, rtol=0)


def test_encoder_classification_matches_peft_with_mask_and_token_types(tiny_bert, token_ids):
    ours = with_adapter(tiny_bert, tt.PromptTuningConfig(num_virtual_tokens=5))
    twin = peft_twin(tiny_bert, ours, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5))
    mask, types = padded(token_ids), torch.zeros_like(token_ids)
    types[:, 5:] = 1
    with torch.no_grad():
        logits = ours(token_ids, attention_mask=mask, token_type_ids=types).logits
        expected = twin(input_ids=token_ids, attention_mask=mask, token_type_ids=types).logits
        assert not torch.allclose(logits, tiny_bert(token_ids, attention_mask=mask, token_type_ids=types).logits, atol=1e-4)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_text_init_takes_the_embeddings_of_the_text_tokens(minilm_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    text = "classify the sentiment"
    config = tt.PromptTuningConfig(num_virtual_tokens=8, init="TEXT", init_text=text, tokenizer=minilm_path)
    ours = with_adapter(base, config)
    ids = AutoTokenizer.from_pretrained(minilm_path)(text)["input_ids"]  # [CLS] ... [SEP], 5 tokens
    expected_ids = (ids * 2)[:8]  # repeated to fill the 8 virtual tokens
    words = base.get_input_embeddings().weight
    torch.testing.assert_close(delta_of(ours).embedding.weight, words[expected_ids])
    twin = peft.get_peft_model(
        base, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=8, prompt_tuning_init="TEXT",
                                      prompt_tuning_init_text=text, tokenizer_name_or_path=minilm_path)
    )
    torch.testing.assert_close(delta_of(ours).embedding.weight, twin.prompt_encoder["default"].embedding.weight)


def test_text_init_accepts_a_tokenizer_object(tiny_bert):
    config = tt.PromptTuningConfig(num_virtual_tokens=3, init="TEXT", init_text="x", tokenizer=lambda text: {"input_ids": [7, 9]})
    ours = with_adapter(tiny_bert, config)
    torch.testing.assert_close(delta_of(ours).embedding.weight, tiny_bert.get_input_embeddings().weight[[7, 9, 7]])


def test_bad_configs_are_refused_clearly():
    with pytest.raises(tt.ConfigError, match="needs a tokenizer"):
        tt.PromptTuningConfig(init="TEXT", init_text="hello")
    with pytest.raises(tt.ConfigError, match="init_text"):
        tt.PromptTuningConfig(init="TEXT", tokenizer="somewhere")
    for bad in (0, -3, 2.5):
        with pytest.raises(tt.ConfigError, match="num_virtual_tokens"):
            tt.PromptTuningConfig(num_virtual_tokens=bad)
    with pytest.raises(tt.ConfigError, match="init must be one of"):
        tt.PromptTuningConfig(init="ZEROS")


class NoEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x)


def test_a_model_without_an_embedding_is_refused_naming_its_class():
    with pytest.raises(TypeError, match="NoEmbedding"):
        tt.apply(NoEmbedding(), tt.PromptTuningConfig(num_virtual_tokens=2))


def test_only_the_prompt_trains_and_the_counts_show_it(tiny_llama, token_ids, capsys):
    ours = with_adapter(tiny_llama, tt.PromptTuningConfig(num_virtual_tokens=4))
    trainable, total = tt.trainable_parameters(ours)
    assert trainable == 4 * 32 and total == sum(p.numel() for p in tiny_llama.parameters()) + 4 * 32
    tt.print_trainable_parameters(ours)
    assert "trainable params: 128 " in capsys.readouterr().out
    ours.train()
    ours(input_ids=token_ids, labels=token_ids).loss.backward()
    grads = {n for n, p in ours.named_parameters() if p.grad is not None}
    assert grads == {"trimtune_prompts.deltas.default.embedding.weight"}


def test_disable_delete_and_unload_give_back_the_base(tiny_llama, token_ids):
    ours = with_adapter(tiny_llama, tt.PromptTuningConfig(num_virtual_tokens=4))
    with torch.no_grad():
        plain = tiny_llama(token_ids).logits
        with tt.disable_adapters(ours):
            torch.testing.assert_close(ours(token_ids).logits, plain)
        assert ours(token_ids).logits.shape[1] == 13
        tt.unload(ours)
        assert not hasattr(ours, "trimtune_prompts")
        torch.testing.assert_close(ours(token_ids).logits, plain)  # hook gone too
    again = with_adapter(tiny_llama, tt.PromptTuningConfig(num_virtual_tokens=4))
    tt.delete_adapter(again, "default")
    with torch.no_grad():
        torch.testing.assert_close(again(token_ids).logits, plain)


def test_prompt_and_lora_adapters_combine_and_switch(tiny_llama, token_ids):
    model = with_adapter(tiny_llama, tt.PromptTuningConfig(num_virtual_tokens=2), name="prompt")
    tt.apply(model, tt.LoraConfig(r=2), name="lora")
    for _, layer in tt.core.state.layers(model):
        nn.init.normal_(layer.deltas["lora"].lora_B)
    with torch.no_grad():
        lora_only = model(token_ids).logits
        tt.set_adapter(model, "prompt")
        prompt_only = model(token_ids).logits
        tt.set_adapter(model, ["prompt", "lora"])
        both = model(token_ids).logits
    assert lora_only.shape[1] == 9 and prompt_only.shape[1] == both.shape[1] == 11
    assert not torch.allclose(both, prompt_only, atol=1e-4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "trimtune_prompts.deltas.prompt.embedding.weight" in trainable and any("lora_B" in n for n in trainable)
    tt.set_adapter(model, "lora")
    assert not any("trimtune_prompts" in n for n, p in model.named_parameters() if p.requires_grad)


def test_two_prompt_adapters_concatenate(tiny_gpt2, token_ids):
    model = with_adapter(tiny_gpt2, tt.PromptTuningConfig(num_virtual_tokens=2), name="a")
    tt.apply(model, tt.PromptTuningConfig(num_virtual_tokens=3), name="b")
    tt.set_adapter(model, ["a", "b"])
    with torch.no_grad():
        assert model(token_ids).logits.shape[1] == 2 + 3 + 9
        out = generate(model, token_ids, padded(token_ids))
    assert out.shape == (2, 14)


def test_sample_vocab_init_takes_rows_of_the_vocabulary(tiny_bert):
    ours = with_adapter(tiny_bert, tt.PromptTuningConfig(num_virtual_tokens=6, init="SAMPLE_VOCAB"))
    words = tiny_bert.get_input_embeddings().weight
    rows = delta_of(ours).embedding.weight
    assert all(torch.isclose(words, row).all(dim=1).any() for row in rows)


def test_encoder_decoder_models_are_refused():
    from transformers import T5Config, T5ForConditionalGeneration

    model = T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=50, d_kv=8))
    with pytest.raises(TypeError, match="T5ForConditionalGeneration is encoder-decoder"):
        tt.apply(model, tt.PrefixTuningConfig(num_virtual_tokens=2))
