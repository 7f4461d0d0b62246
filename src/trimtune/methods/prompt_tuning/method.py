"""Prompt tuning (Lester et al. 2021): n trainable virtual token embeddings prepended to the input.

Init ``RANDOM`` (standard normal, as ``nn.Embedding``), ``SAMPLE_VOCAB`` (embeddings of random
vocabulary tokens) or ``TEXT`` (embeddings of ``init_text``'s tokens, repeated or truncated to n;
needs a tokenizer: a local path or a tokenizer object).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...core.config import check_choice
from ...core.input_deltas.apply import add_input_delta, check_prompt_fields, check_text_init, text_token_ids
from ...core.input_deltas.input_delta import InputDelta
from ...core.input_deltas.model_info import input_embedding

INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")


@dataclass
class PromptTuningConfig:
    num_virtual_tokens: int = 20
    init: str = "RANDOM"
    init_text: str | None = None
    tokenizer: object = None  # a tokenizer path (str) or a tokenizer object; only for init="TEXT"
    modules_to_save: Sequence[str] = ()

    peft_type = "PROMPT_TUNING"
    sizes_by_kv_heads = False

    def __post_init__(self):
        check_prompt_fields(self)
        check_choice("init", self.init, INITS)
        check_text_init(self)

    def to_peft_dict(self) -> dict:
        by_path = isinstance(self.tokenizer, str)  # peft can only record a tokenizer by its path
        return {
            "prompt_tuning_init": self.init if (self.init != "TEXT" or by_path) else "RANDOM",
            "prompt_tuning_init_text": self.init_text,
            "tokenizer_name_or_path": self.tokenizer if by_path else None,
        }

    @classmethod
    def from_peft_dict(cls, fields: dict, modules_to_save=()) -> PromptTuningConfig:
        return cls(num_virtual_tokens=fields["num_virtual_tokens"], modules_to_save=modules_to_save)


def initial_token_ids(config: PromptTuningConfig, vocab_size: int) -> torch.Tensor | None:
    """The vocabulary ids whose embeddings start the prompt (None: random vectors)."""
    n = config.num_virtual_tokens
    if config.init == "SAMPLE_VOCAB":
        return torch.randint(0, vocab_size, (n,))
    if config.init == "TEXT":
        return text_token_ids(config.tokenizer, config.init_text, n, vocab_size)
    return None


def apply_prompt_tuning(model: nn.Module, config: PromptTuningConfig, name: str) -> None:
    embedding = input_embedding(model, "prompt tuning")
    delta = InputDelta(config.num_virtual_tokens, embedding.weight.shape[1], side="embeddings")
    ids = initial_token_ids(config, embedding.weight.shape[0])
    if ids is not None:
        with torch.no_grad():
            delta.embedding.weight.copy_(embedding.weight[ids.to(embedding.weight.device)].float())
    add_input_delta(model, name, delta, config.modules_to_save)
