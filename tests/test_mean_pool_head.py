"""MeanPoolClassifier: masked mean pooling + linear head over an encoder, with LoRA and prompt tuning."""

from __future__ import annotations

import pytest
import torch

import trimtune as tt
from trimtune.models import MeanPoolClassifier, mean_pool


def build() -> MeanPoolClassifier:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=100, max_position_embeddings=64)
    return MeanPoolClassifier(BertModel(config, add_pooling_layer=False), num_labels=3).eval()


@pytest.fixture
def pooled():
    return build()


def padded_pair():
    """Two texts of lengths 7 and 4, the second right-padded with token 0."""
    ids = torch.tensor([[5, 17, 23, 9, 41, 8, 30], [12, 7, 66, 3, 0, 0, 0]])
    mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    return ids, mask


def test_mean_pool_averages_real_tokens_only():
    hidden = torch.arange(24.0).view(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    assert torch.equal(pooled[0], (hidden[0, 0] + hidden[0, 1]) / 2)
    assert torch.equal(pooled[1], hidden[1].mean(0))
    # a mask longer than the states (prefix tuning's virtual tokens live in the cache): its last columns apply
    assert torch.equal(mean_pool(hidden, torch.cat([torch.ones(2, 5, dtype=torch.long), mask], 1)), pooled)
    assert torch.equal(mean_pool(hidden, None), hidden.mean(1))
    # leading virtual-token states (prompt tuning) are skipped; the mask then covers them too
    assert torch.equal(mean_pool(torch.cat([hidden, hidden], 1), torch.cat([mask, mask], 1), skip=3), pooled)


def test_logits_and_loss_equal_a_hand_computation(pooled):
    ids, mask = padded_pair()
    labels = torch.tensor([2, 0])
    out = pooled(input_ids=ids, attention_mask=mask, labels=labels)
    hidden = pooled.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    expected = pooled.classifier((hidden * m).sum(1) / m.sum(1))
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(expected, labels))


def test_padding_does_not_change_a_text_s_logits(pooled):
    ids, mask = padded_pair()
    batched = pooled(input_ids=ids, attention_mask=mask).logits
    alone = pooled(input_ids=ids[1:, :4], attention_mask=mask[1:, :4]).logits
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=1e-5)


def test_lora_adapter_saves_and_loads_with_the_head(pooled, tmp_path):
    ids, mask = padded_pair()
    tt.apply(pooled, tt.LoraConfig(r=4, alpha=8, targets="query|value", modules_to_save=["classifier"]))
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([2, 0])}
    tt.train(pooled, [batch], epochs=3, lr=1e-2, progress=False)
    pooled.eval()
    trained = pooled(input_ids=ids, attention_mask=mask).logits
    tt.save_adapter(pooled, tmp_path / "adapter")

    fresh = build()  # the same base (its untrained head included: the fingerprint covers it)
    assert not torch.allclose(fresh(input_ids=ids, attention_mask=mask).logits, trained, atol=1e-3)
    tt.load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(fresh(input_ids=ids, attention_mask=mask).logits, trained, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", [tt.PromptTuningConfig(num_virtual_tokens=3),
                                    tt.PTuningConfig(num_virtual_tokens=3, encoder_hidden_size=16)],
                         ids=["prompt", "p-tuning"])
def test_prompt_methods_pool_over_the_real_tokens_only(pooled, config):
    """The virtual tokens condition the text's states but are not averaged in, and the text keeps the
    positions it has without them: the head reads the text."""
    ids, mask = padded_pair()
    tt.apply(pooled, config)
    with torch.no_grad():
        logits = pooled(input_ids=ids, attention_mask=mask).logits
        prompts = pooled.trimtune_prompts.deltas["default"].output()
        embeds = torch.cat([prompts.expand(2, -1, -1), pooled.encoder.get_input_embeddings()(ids)], 1)
        full_mask = torch.cat([torch.ones(2, 3, dtype=mask.dtype), mask], 1)
        positions = torch.tensor([0, 1, 2] + list(range(7))).expand(2, -1)  # the text keeps 0..6 behind the prompt
        hidden = pooled.encoder(inputs_embeds=embeds, attention_mask=full_mask,
                                position_ids=positions).last_hidden_state[:, 3:]
        m = mask.unsqueeze(-1).float()
        expected = pooled.classifier((hidden * m).sum(1) / m.sum(1))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_prompt_tuning_ignores_padding(pooled):
    ids, mask = padded_pair()
    tt.apply(pooled, tt.PromptTuningConfig(num_virtual_tokens=3, modules_to_save=["classifier"]))
    batched = pooled(input_ids=ids, attention_mask=mask).logits
    alone = pooled(input_ids=ids[1:, :4], attention_mask=mask[1:, :4]).logits
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=1e-5)
    with tt.disable_adapters(pooled):
        assert not torch.allclose(pooled(input_ids=ids, attention_mask=mask).logits, batched, atol=1e-4)


def test_prefix_tuning_reaches_the_encoder_through_the_head(pooled):
    """The head passes the cache on under the encoder's own argument name, so the prefixes take effect."""
    ids, mask = padded_pair()
    with torch.no_grad():
        before = pooled(input_ids=ids, attention_mask=mask).logits
    tt.apply(pooled, tt.PrefixTuningConfig(num_virtual_tokens=3))
    with torch.no_grad():
        after = pooled(input_ids=ids, attention_mask=mask).logits
        alone = pooled(input_ids=ids[1:, :4], attention_mask=mask[1:, :4]).logits
    assert not torch.allclose(after, before, atol=1e-4)
    torch.testing.assert_close(after[1:], alone, atol=1e-5, rtol=0)  # padding still ignored


def test_prefix_tuning_leaves_the_text_at_positions_from_zero(pooled):
    """BERT would number the text after the cache (positions 3..9); the head keeps 0..6, as without prefixes."""
    ids, mask = padded_pair()
    seen = []
    pooled.encoder.embeddings.position_embeddings.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    tt.apply(pooled, tt.PrefixTuningConfig(num_virtual_tokens=3))
    with torch.no_grad():
        pooled(input_ids=ids, attention_mask=mask)
    assert torch.equal(seen[-1], torch.arange(7).expand(2, -1))


def test_roberta_style_positions_keep_their_own_start():
    """RoBERTa numbers from padding_idx + 1; behind a prefix the text keeps exactly those positions."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    config = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           vocab_size=100, max_position_embeddings=64)
    head = MeanPoolClassifier(RobertaModel(config, add_pooling_layer=False), num_labels=3).eval()
    ids = torch.tensor([[5, 17, 23, 9]])
    seen = []
    head.encoder.embeddings.position_embeddings.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        head(input_ids=ids)
        tt.apply(head, tt.PrefixTuningConfig(num_virtual_tokens=3))
        head(input_ids=ids)
    assert torch.equal(seen[0], seen[1]) and seen[1].tolist() == [[2, 3, 4, 5]]
