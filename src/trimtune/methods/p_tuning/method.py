"""P-tuning (Liu et al. 2021): virtual token embeddings produced by a small prompt encoder.

The encoder is an MLP (3 linear layers with ReLU) or a bidirectional LSTM followed by a 2-layer MLP,
over a trainable table of n token embeddings (peft's module names, so state dicts line up). Its output
is cached whenever no gradient is needed (``InputDelta.output``), so evaluation and every
``generate()`` step reuse one encoder run; ``fold`` replaces the encoder by that output for good.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...core.config import check_choice, check_fraction, check_positive_int
from ...core.input_deltas.apply import add_input_delta, check_prompt_fields
from ...core.input_deltas.input_delta import InputDelta
from ...core.input_deltas.model_info import token_dim


@dataclass
class PTuningConfig:
    num_virtual_tokens: int = 20
    encoder: str = "MLP"  # or "LSTM"
    encoder_hidden_size: int | None = None  # default: the model's hidden size
    encoder_num_layers: int = 2  # LSTM layers (the MLP always has 3 linear layers, as in peft)
    encoder_dropout: float = 0.0  # between LSTM layers
    modules_to_save: Sequence[str] = ()

    peft_type = "P_TUNING"
    sizes_by_kv_heads = False

    def __post_init__(self):
        check_prompt_fields(self)
        check_choice("encoder", self.encoder, ("MLP", "LSTM"))
        if self.encoder_hidden_size is not None:
            check_positive_int("encoder_hidden_size", self.encoder_hidden_size)
        check_positive_int("encoder_num_layers", self.encoder_num_layers)
        check_fraction("encoder_dropout", self.encoder_dropout)

    def to_peft_dict(self) -> dict:
        return {
            "encoder_reparameterization_type": self.encoder,
            "encoder_hidden_size": self.encoder_hidden_size,
            "encoder_num_layers": self.encoder_num_layers,
            "encoder_dropout": self.encoder_dropout,
        }

    @classmethod
    def from_peft_dict(cls, fields: dict, modules_to_save=()) -> PTuningConfig:
        return cls(
            num_virtual_tokens=fields["num_virtual_tokens"],
            encoder=fields.get("encoder_reparameterization_type") or "MLP",
            encoder_hidden_size=fields.get("encoder_hidden_size"),
            encoder_num_layers=fields.get("encoder_num_layers") or 2,
            encoder_dropout=fields.get("encoder_dropout") or 0.0,
            modules_to_save=modules_to_save,
        )


class PromptEncoder(InputDelta):
    def __init__(self, num_virtual_tokens: int, dim: int, config: PTuningConfig):
        super().__init__(num_virtual_tokens, dim, side="embeddings")
        hidden = config.encoder_hidden_size or dim
        self.lstm_head = None
        if config.encoder == "LSTM":
            self.lstm_head = nn.LSTM(
                dim, hidden, num_layers=config.encoder_num_layers, dropout=config.encoder_dropout,
                bidirectional=True, batch_first=True,
            )
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, dim))
        else:
            self.mlp_head = nn.Sequential(
                nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim)
            )

    def compute(self) -> torch.Tensor:
        x = self.embedding.weight
        if self.lstm_head is not None:
            x = self.lstm_head(x.unsqueeze(0))[0][0]
        return self.mlp_head(x)


def apply_p_tuning(model: nn.Module, config: PTuningConfig, name: str) -> None:
    dim = token_dim(model, "P-tuning")
    add_input_delta(model, name, PromptEncoder(config.num_virtual_tokens, dim, config), config.modules_to_save)
