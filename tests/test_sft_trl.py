"""trimtune's instruction tuning against TRL's SFTTrainer + peft LoRA on a tiny random Llama: the same
prompt/completion data, LoRA, starting factors, batches and lr, dropout 0; the per-step losses agree
within 1e-4, packing off and on (TRL's best-fit-decreasing windows are ours too). The comparison is
``benchmarks/sft_vs_trl.py``'s, which runs it on SmolLM2-135M."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
from gguf_models import bpe_tokenizer

pytest.importorskip("trl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sft_vs_trl  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer()


def tiny_llama(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=len(tokenizer), max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_per_step_losses_equal_trl(tokenizer, packing):
    setting = sft_vs_trl.Setting(packing=packing, steps=4, batch=2, max_length=160, lr=5e-2, r=4, alpha=8, targets=("q_proj", "v_proj"))
    base = tiny_llama(tokenizer)
    records = [{"prompt": r["prompt"].split("\n")[0] + "\nAnswer:", "completion": r["completion"]} for r in sft_vs_trl.review_records(12)]
    result = sft_vs_trl.compare(lambda: copy.deepcopy(base), tokenizer, records, setting)
    assert result["report"]["truncated"] == 0
    assert len(result["losses"]) == len(result["trl_losses"]) == 4
    assert result["max_diff"] < 1e-4, (result["losses"], result["trl_losses"])
    assert result["losses"][-1] < result["losses"][0] - 1e-3  # it trained, so equal losses mean equal training
    if packing:  # the same windows, in the same order
        assert [row.input_ids for row in result["loader"].dataset] == result["trainer"].train_dataset["input_ids"]
        assert len(result["loader"].dataset) < 12


MARKED = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
          "{{ m['content'] }}<|im_end|>\n{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_losses_equal_trl_assistant_only(tokenizer):
    """Chats through a template that marks assistant text: TRL's assistant_only_loss, trimtune's default."""
    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.chat_template = MARKED
    records = [{"messages": [{"role": "user", "content": r["prompt"].split("\n")[0]}, {"role": "assistant", "content": r["completion"].strip()}]}
               for r in sft_vs_trl.review_records(6)]
    setting = sft_vs_trl.Setting(steps=3, batch=2, max_length=160, lr=5e-2, r=4, alpha=8, targets=("q_proj", "v_proj"),
                                 assistant_only_loss=True)
    base = tiny_llama(tokenizer)
    result = sft_vs_trl.compare(lambda: copy.deepcopy(base), chat_tokenizer, records, setting)
    assert result["max_diff"] < 1e-4, (result["losses"], result["trl_losses"])
    first = result["loader"].dataset[0]
    assert chat_tokenizer.decode([t for t in first.labels if t != -100]) == records[0]["messages"][1]["content"] + "<|im_end|>\n"
