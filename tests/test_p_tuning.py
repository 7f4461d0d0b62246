import peft
import pytest
import torch
from prompt_twins import delta_of, generate, padded, peft_twin, with_adapter

import trimtune as tt

ENCODERS = [
    (dict(encoder="MLP", encoder_hidden_size=16), dict(encoder_reparameterization_type="MLP", encoder_hidden_size=16)),
    (dict(encoder="LSTM", encoder_hidden_size=8), dict(encoder_reparameterization_type="LSTM", encoder_hidden_size=8)),
]


@pytest.mark.parametrize("ours_kw,peft_kw", ENCODERS, ids=["mlp", "lstm"])
def test_llama_forward_and_generate_match_peft(tiny_llama, token_ids, ours_kw, peft_kw):
    ours = with_adapter(tiny_llama, tt.PTuningConfig(num_virtual_tokens=3, **ours_kw))
    twin = peft_twin(tiny_llama, ours, peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, **peft_kw))
    mask = padded(token_ids)
    with torch.no_grad():
        logits = ours(input_ids=token_ids, attention_mask=mask).logits
        torch.testing.assert_close(logits, twin(input_ids=token_ids, attention_mask=mask).logits, atol=1e-5, rtol=0)
    out = generate(ours, token_ids, mask)
    assert out.shape == (2, 14) and torch.equal(out, generate(twin, token_ids, mask))


@pytest.mark.parametrize("ours_kw,peft_kw", ENCODERS, ids=["mlp", "lstm"])
def test_bert_classification_matches_peft(tiny_bert, token_ids, ours_kw, peft_kw):
    ours = with_adapter(tiny_bert, tt.PTuningConfig(num_virtual_tokens=4, **ours_kw))
    twin = peft_twin(tiny_bert, ours, peft.PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=4, **peft_kw))
    mask = padded(token_ids)
    with torch.no_grad():
        logits = ours(token_ids, attention_mask=mask).logits
        torch.testing.assert_close(logits, twin(input_ids=token_ids, attention_mask=mask).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(logits, tiny_bert(token_ids, attention_mask=mask).logits, atol=1e-4)


def test_encoder_runs_once_at_inference_and_again_after_an_update(tiny_gpt2, token_ids):
    ours = with_adapter(tiny_gpt2, tt.PTuningConfig(num_virtual_tokens=3))
    runs = []
    delta_of(ours).mlp_head.register_forward_hook(lambda *_: runs.append(1))
    mask = padded(token_ids)
    first = generate(ours, token_ids, mask)
    generate(ours, token_ids, mask)
    with torch.no_grad():
        ours(token_ids)
    assert len(runs) == 1  # one encoder run for two generations (10 steps) and a forward
    with torch.no_grad():
        delta_of(ours).embedding.weight.add_(1.0)  # an optimizer step bumps the parameter version
    assert generate(ours, token_ids, mask).shape == first.shape
    assert len(runs) == 2


def test_training_reaches_the_encoder_and_fold_keeps_outputs(tiny_bert, token_ids):
    ours = with_adapter(tiny_bert, tt.PTuningConfig(num_virtual_tokens=3, encoder="LSTM", modules_to_save=["classifier"]))
    ours.train()
    ours(token_ids, labels=torch.tensor([0, 2])).loss.backward()
    grads = {n for n, p in ours.named_parameters() if p.grad is not None}
    assert any("lstm_head" in n for n in grads) and any("mlp_head" in n for n in grads)
    assert any("classifier.copies.default" in n for n in grads)
    assert all("trimtune_prompts" in n or "copies" in n for n in grads)
    ours.eval()
    with torch.no_grad():
        before = ours(token_ids).logits
        tt.fold(ours)
        torch.testing.assert_close(ours(token_ids).logits, before, atol=1e-6, rtol=0)
    assert tt.trainable_parameters(ours)[0] == 3 * 32 + 3 * 32 + 3


def test_bad_configs_are_refused_clearly():
    with pytest.raises(tt.ConfigError, match="encoder must be one of"):
        tt.PTuningConfig(encoder="GRU")
    with pytest.raises(tt.ConfigError, match="num_virtual_tokens"):
        tt.PTuningConfig(num_virtual_tokens=-1)
    with pytest.raises(tt.ConfigError, match="encoder_dropout"):
        tt.PTuningConfig(encoder_dropout=1.5)
