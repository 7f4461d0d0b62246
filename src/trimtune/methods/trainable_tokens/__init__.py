"""Trainable tokens: train only chosen rows (token ids) of the input embedding, e.g. new special tokens.

``config.py``: TrainableTokensConfig and its peft file fields; ``delta.py``: the rows on the embedding
and their tied twin on an output head sharing its weight; ``apply.py``: adding an adapter. Files are
peft's "TRAINABLE_TOKENS" files.
"""

from ...core.method import Method, register
from .apply import apply_trainable_tokens
from .config import TrainableTokensConfig
from .delta import TiedTokenRows, TokenRows


@register
class TrainableTokens(Method):
    name = "trainable_tokens"
    config = TrainableTokensConfig
    peft_type = "TRAINABLE_TOKENS"

    def apply(self, model, config: TrainableTokensConfig, name: str) -> None:
        apply_trainable_tokens(model, config, name)


__all__ = ["TiedTokenRows", "TokenRows", "TrainableTokensConfig", "apply_trainable_tokens"]
