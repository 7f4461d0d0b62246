import copy

import peft
import pytest
import torch
from prompt_twins import delta_of, generate, padded, peft_twin, with_adapter
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

import trimtune as tt

CONFIGS = [
    (dict(), dict()),
    (dict(projection=True, encoder_hidden_size=16), dict(prefix_projection=True, encoder_hidden_size=16)),
]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("ours_kw,peft_kw", CONFIGS, ids=["table", "projection"])
def test_decoder_forward_and_generate_match_peft(fixture, ours_kw, peft_kw, request, token_ids):
    base = request.getfixturevalue(fixture)
    ours = with_adapter(base, tt.PrefixTuningConfig(num_virtual_tokens=3, **ours_kw))
    twin = peft_twin(base, ours, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, **peft_kw))
    mask = padded(token_ids)
    with torch.no_grad():
        logits = ours(input_ids=token_ids, attention_mask=mask).logits
        assert logits.shape == (2, 9, 100)  # prefixes live in the cache, not in the sequence
        torch.testing.assert_close(logits, twin(input_ids=token_ids, attention_mask=mask).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(logits, base(input_ids=token_ids, attention_mask=mask).logits, atol=1e-3)
    for sample in (False, True):
        out = generate(ours, token_ids, mask, sample=sample)
        assert out.shape == (2, 14) and torch.equal(out[:, :9], token_ids)
        assert torch.equal(out, generate(twin, token_ids, mask, sample=sample))


def test_gqa_prefixes_have_the_key_value_heads(tiny_llama, token_ids):
    ours = with_adapter(tiny_llama, tt.PrefixTuningConfig(num_virtual_tokens=3))
    assert delta_of(ours).embedding.weight.shape == (3, 2 * 2 * 2 * 8)  # layers * (k, v) * kv_heads * head_dim
    with torch.no_grad():
        cache = ours(input_ids=token_ids, use_cache=True).past_key_values
    assert cache.get_seq_length() == 3 + 9
    assert cache.layers[0].keys.shape == (2, 2, 12, 8)  # 2 kv heads, not 4 query heads
    prefix = delta_of(ours).embedding.weight.view(3, 4, 2, 8)  # (n, layers * 2, kv_heads, head_dim)
    torch.testing.assert_close(cache.layers[1].values[0, :, :3], prefix[:, 3].transpose(0, 1))


@pytest.mark.parametrize("ours_kw,peft_kw", CONFIGS, ids=["table", "projection"])
def test_bert_classification_matches_peft(tiny_bert, token_ids, ours_kw, peft_kw):
    ours = with_adapter(tiny_bert, tt.PrefixTuningConfig(num_virtual_tokens=4, **ours_kw))
    twin = peft_twin(tiny_bert, ours, peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4, **peft_kw))
    mask = padded(token_ids)
    with torch.no_grad():
        logits = ours(token_ids, attention_mask=mask).logits
        torch.testing.assert_close(logits, twin(input_ids=token_ids, attention_mask=mask).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(logits, tiny_bert(token_ids, attention_mask=mask).logits, atol=1e-4)


def test_fold_removes_the_mlp_and_keeps_the_outputs(tiny_gpt2, token_ids):
    ours = with_adapter(tiny_gpt2, tt.PrefixTuningConfig(num_virtual_tokens=3, projection=True))
    with torch.no_grad():
        before = ours(token_ids).logits
    trainable_before, _ = tt.trainable_parameters(ours)
    tt.fold(ours)
    assert not hasattr(delta_of(ours), "transform")
    trainable_after, _ = tt.trainable_parameters(ours)
    assert trainable_after == 3 * 2 * 2 * 32 < trainable_before
    with torch.no_grad():
        torch.testing.assert_close(ours(token_ids).logits, before, atol=1e-6, rtol=0)


def test_zero_init_starts_at_the_base_value_path_and_trains(tiny_llama, token_ids):
    ours = with_adapter(tiny_llama, tt.PrefixTuningConfig(num_virtual_tokens=2, init="ZERO"))
    assert torch.count_nonzero(delta_of(ours).embedding.weight) == 0
    ours.train()
    ours(input_ids=token_ids, labels=token_ids).loss.backward()
    grads = {n for n, p in ours.named_parameters() if p.grad is not None}
    assert grads == {"trimtune_prompts.deltas.default.embedding.weight"}


def test_prefix_and_prompt_tuning_combine(tiny_llama, token_ids):
    model = with_adapter(tiny_llama, tt.PrefixTuningConfig(num_virtual_tokens=2), name="prefix")
    tt.apply(model, tt.PromptTuningConfig(num_virtual_tokens=3), name="prompt")
    tt.set_adapter(model, ["prefix", "prompt"])
    mask = padded(token_ids)
    with torch.no_grad():
        out = model(input_ids=token_ids, attention_mask=mask, use_cache=True)
    assert out.logits.shape[1] == 3 + 9 and out.past_key_values.get_seq_length() == 2 + 3 + 9
    assert generate(model, token_ids, mask).shape == (2, 14)


def test_bad_input_is_refused_clearly(token_ids):
    with pytest.raises(tt.ConfigError, match="num_virtual_tokens"):
        tt.PrefixTuningConfig(num_virtual_tokens=0)
    with pytest.raises(tt.ConfigError, match="init"):
        tt.PrefixTuningConfig(init="zeros")

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)

        def get_input_embeddings(self):
            return self.embed

        def forward(self, input_ids=None, inputs_embeds=None):
            return self.embed(input_ids)

    with pytest.raises(TypeError, match="Plain"):
        tt.apply(Plain(), tt.PrefixTuningConfig(num_virtual_tokens=2))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2", "tiny_bert"])
@pytest.mark.parametrize("use_reentrant,ours_kw", [
    (False, dict()), (True, dict()), (False, dict(projection=True, encoder_hidden_size=16)),
], ids=["table", "table-reentrant", "projection"])
def test_checkpointed_training_gives_the_same_gradients(fixture, use_reentrant, ours_kw, request, token_ids):
    base = request.getfixturevalue(fixture)
    labels = torch.tensor([0, 1]) if fixture == "tiny_bert" else token_ids
    plain = with_adapter(base, tt.PrefixTuningConfig(num_virtual_tokens=3, **ours_kw))
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    grads = []
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(0)  # the same dropout masks in both runs (the recompute replays the RNG state)
        model(input_ids=token_ids, attention_mask=padded(token_ids), labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g.abs().sum() > 0 for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)
    layers = [m for m in checkpointed.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and not any(layer._can_checkpoint_with_cache for layer in layers)  # switched back after the call
    assert all(m.gradient_checkpointing for m in checkpointed.modules() if hasattr(m, "gradient_checkpointing"))


def test_checkpointed_prefix_training_refuses_an_mlp_under_reentrant_checkpointing(tiny_llama, token_ids):
    model = with_adapter(tiny_llama, tt.PrefixTuningConfig(num_virtual_tokens=2, projection=True))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    with pytest.raises(ValueError, match="use_reentrant': False"):
        model(input_ids=token_ids, labels=token_ids)
    tt.fold(model)  # a plain table trains under reentrant checkpointing
    model(input_ids=token_ids, labels=token_ids).loss.backward()


def test_checkpointed_prefix_training_refuses_a_callers_cache(tiny_llama, token_ids):
    from transformers import DynamicCache

    model = with_adapter(tiny_llama, tt.PrefixTuningConfig(num_virtual_tokens=2))
    model.gradient_checkpointing_enable()
    model.train()
    with pytest.raises(ValueError, match="twice; pass no past_key_values"):
        model(input_ids=token_ids, past_key_values=DynamicCache(config=tiny_llama.config))


def test_gradient_checkpointing_works_for_prompts(tiny_llama, token_ids):
    tiny_llama.gradient_checkpointing_enable()
    tiny_llama.train()
    prompt = with_adapter(tiny_llama, tt.PromptTuningConfig(num_virtual_tokens=2))
    prompt(input_ids=token_ids, labels=token_ids).loss.backward()
    assert delta_of(prompt).embedding.weight.grad.abs().sum() > 0


class CacheNamedCache(nn.Module):
    """A causal LM whose forward calls its attention cache ``cache``, as transformers >= 5.24 does."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_input_embeddings(self) -> nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None, use_cache=None):
        return self.inner(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
        )


def test_prefixes_reach_a_model_that_names_its_cache_cache(tiny_llama, token_ids):
    """The hook writes the prefixes under the model's own argument name, whichever transformers release it has."""
    config = tt.PrefixTuningConfig(num_virtual_tokens=3)
    direct = with_adapter(tiny_llama, config)
    renamed = with_adapter(CacheNamedCache(tiny_llama), config)
    delta_of(renamed).load_state_dict(delta_of(direct).state_dict())
    mask = padded(token_ids)
    with torch.no_grad():
        expected = direct(input_ids=token_ids, attention_mask=mask).logits
        torch.testing.assert_close(renamed(input_ids=token_ids, attention_mask=mask).logits, expected, atol=1e-6, rtol=0)
        assert not torch.allclose(expected, tiny_llama(input_ids=token_ids, attention_mask=mask).logits, atol=1e-3)


# ---- init="TEXT": the prefixes start as the model's own keys and values for a text (Li & Liang 2021) ----
def text_config(n=5, **kw):
    return tt.PrefixTuningConfig(num_virtual_tokens=n, init="TEXT", init_text="x", tokenizer=words, **kw)


def words(text, add_special_tokens=True):
    """A tokenizer object: the prefix's text is read without special tokens (which would be 1 and 2 here)."""
    return {"input_ids": ([1] if add_special_tokens else []) + [5, 7, 9] + ([2] if add_special_tokens else [])}


def keys_and_values_by_hand(model, ids):
    """Per layer (keys, values) of shape (kv_heads, n, head_dim), from each layer's input hidden states and its own
    projections (and rotary embedding for Llama), not from the attention cache the library reads."""
    with torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states
        out = []
        if hasattr(model, "bert"):
            for layer, h in zip(model.bert.encoder.layer, states):
                attn = layer.attention.self
                split = lambda t: t.view(len(ids[0]), attn.num_attention_heads, -1).transpose(0, 1)
                out.append((split(attn.key(h[0])), split(attn.value(h[0]))))
        else:
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            positions = torch.arange(ids.shape[1]).unsqueeze(0)
            cos, sin = model.model.rotary_emb(states[0], positions)
            for layer, h in zip(model.model.layers, states):
                x, attn = layer.input_layernorm(h), layer.self_attn
                split = lambda t: t.view(1, ids.shape[1], -1, attn.head_dim).transpose(1, 2)
                keys, values = split(attn.k_proj(x)), split(attn.v_proj(x))
                keys, _ = apply_rotary_pos_emb(keys, keys, cos, sin)
                out.append((keys[0], values[0]))
    return out


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama"])
@pytest.mark.parametrize("n,ids", [(5, [5, 7, 9, 5, 7]), (2, [5, 7])], ids=["repeated", "truncated"])
def test_text_init_holds_the_models_own_keys_and_values(fixture, n, ids, request):
    base = request.getfixturevalue(fixture)
    ours = with_adapter(base, text_config(n=n))  # the text's ids are 5, 7, 9
    layers, heads, head_dim = delta_of(ours).kv_shape
    table = delta_of(ours).embedding.weight.view(n, layers, 2, heads, head_dim)
    expected = keys_and_values_by_hand(base, torch.tensor([ids]))
    assert len(expected) == layers == 2 and expected[0][0].shape == (heads, n, head_dim)
    for layer, (keys, values) in enumerate(expected):
        torch.testing.assert_close(table[:, layer, 0].transpose(0, 1), keys, atol=1e-5, rtol=0)
        torch.testing.assert_close(table[:, layer, 1].transpose(0, 1), values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2", "tiny_llama"])
def test_text_init_through_the_mlp_outputs_the_same_prefixes(fixture, request):
    base = request.getfixturevalue(fixture)
    table = delta_of(with_adapter(base, text_config())).embedding.weight
    ours = with_adapter(base, text_config(projection=True, encoder_hidden_size=8))
    torch.testing.assert_close(delta_of(ours).compute(), table, atol=1e-4, rtol=1e-4)
    assert torch.count_nonzero(delta_of(ours).transform[0].weight) > 0  # the first layer keeps its random init
    with pytest.raises(tt.ConfigError, match="encoder_hidden_size >= num_virtual_tokens - 1"):
        with_adapter(base, text_config(n=6, projection=True, encoder_hidden_size=4))


def test_text_init_reads_the_base_model_in_eval_mode(tiny_llama, token_ids):
    """Other adapters (here a prompt) are off while the text is read, dropout too; the model's modes come back."""
    plain = delta_of(with_adapter(tiny_llama, text_config())).embedding.weight
    model = with_adapter(tiny_llama, tt.PromptTuningConfig(num_virtual_tokens=2), name="prompt")
    model.model.layers[0].train()
    tt.apply(model, text_config(), name="prefix")
    torch.testing.assert_close(delta_of(model, "prefix").embedding.weight, plain)
    assert not model.training and model.model.layers[0].training
    assert tt.active_adapters(model) == ["prefix"]


def test_text_init_bad_input_is_refused_clearly(tiny_bert):
    with pytest.raises(tt.ConfigError, match="needs a tokenizer"):
        tt.PrefixTuningConfig(init="TEXT", init_text="hello")
    with pytest.raises(tt.ConfigError, match="init_text"):
        tt.PrefixTuningConfig(init="TEXT", tokenizer="somewhere")
    with pytest.raises(tt.ConfigError, match="tokenizes to no tokens"):
        tt.apply(tiny_bert, tt.PrefixTuningConfig(init="TEXT", init_text="?", tokenizer=lambda text, **kw: {"input_ids": []}))


def test_a_checkpointed_call_whose_layers_never_read_the_prefixes_is_an_error(tiny_llama):
    from trimtune.core.input_deltas.checkpointed_prefixes import CheckpointedCall, PrefixOnlyCache

    prefix = torch.zeros(1, 2, 3, 8)
    cache = PrefixOnlyCache(tiny_llama.config, [(prefix, prefix), (prefix, prefix)])
    cache.update(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), 0)  # layer 0 reads, layer 1 never does
    assert cache.get_seq_length() == 3  # reading stores nothing
    with pytest.raises(ValueError, match="only 1 of 2 layers saw their prefixes"):
        CheckpointedCall([], [], cache).finish(tiny_llama)
