"""Tiny causal LMs on disk for the export tests: real head, GQA and FFN shapes at test size, random
weights, and a byte-level BPE tokenizer trained here on the shipped demo reviews (seconds), with
special tokens and a chat template, so a GGUF file carries a tokenizer like SmolLM2's."""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bpe_tokenizer(vocab_size: int = 320, split: str | None = None):
    """A fast byte-level BPE tokenizer; ``split``: a Split regex before the byte-level step (Llama 3 / Qwen2 style)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trimtune.data.demo_texts import load_demo_texts

    texts = [r["text"] for r in load_demo_texts()]
    tok = Tokenizer(models.BPE())
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), "isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def causal_lm_dir(path: Path, kind: str = "llama", tokenizer=None, seed: int = 0, **config) -> Path:
    """Save a tiny random ``kind`` (llama, mistral, qwen2, gpt2) causal LM with ``tokenizer`` to ``path``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tokenizer if tokenizer is not None else bpe_tokenizer()
    sizes = {"gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)}.get(kind, dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, rms_norm_eps=1e-5))
    cfg = AutoConfig.for_model(kind, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **{**sizes, **config})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # larger than the default init's 0.02, so the logits differ clearly between tokens
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
