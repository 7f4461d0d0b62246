"""TrainableTokensConfig and its peft ``adapter_config.json`` form (peft's ``TrainableTokensConfig``,
peft_type "TRAINABLE_TOKENS")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...core.config import ConfigError
from ...core.io.peft_format import check_fields, targets_from_peft
from ...core.layer_kinds import EmbeddingKind
from ...core.targets import TargetSpec


@dataclass
class TrainableTokensConfig:
    """token_indices: the token ids whose embedding rows train (e.g. newly added special tokens); every
    other row stays frozen. targets: the embedding (None: the model's input embedding,
    ``get_input_embeddings()``). When the output head shares that weight (tied embeddings), the same
    rows change in the head too. init_weights: True starts the rows at their current values (the model
    is unchanged until trained); False draws them from N(0, 1) (for tests, as peft's option).
    """

    peft_type: ClassVar[str] = "TRAINABLE_TOKENS"

    token_indices: list[int] = field(default_factory=list)
    targets: TargetSpec = None
    init_weights: bool = True

    def __post_init__(self):
        indices = self.token_indices
        if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
            raise ConfigError(f"token_indices must be a list of token ids (integers >= 0), got {indices!r}")
        self.token_indices = list(indices)
        bad = [i for i in self.token_indices if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if not self.token_indices or bad:
            raise ConfigError(f"token_indices must be a non-empty list of token ids (integers >= 0), got {indices!r}")
        repeated = sorted({i for i in self.token_indices if self.token_indices.count(i) > 1})
        if repeated:
            raise ConfigError(f"token_indices must name each token once; {repeated} appear more than once in {indices!r}")
        if not isinstance(self.init_weights, bool):
            raise ConfigError(f"init_weights must be True or False, got {self.init_weights!r}")

    def check_vocabulary(self, rows: int, where: str) -> None:
        """Refuse ids outside an embedding of ``rows`` rows (before the model changes)."""
        outside = [i for i in self.token_indices if i >= rows]
        if outside:
            raise ConfigError(f"token_indices holds {outside}, outside the {rows} rows of {where} (allowed: 0 to {rows - 1}); "
                              "resize the embedding first (model.resize_token_embeddings) to add new tokens")

    # ---- PEFT adapter files (convention: core/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        # peft's files name the embedding only; a tied head follows it there as here
        embeddings = sorted(n for n, layer in layers.items() if isinstance(layer.kind, EmbeddingKind))
        return {"token_indices": self.token_indices, "target_modules": embeddings, "init_weights": True}

    @classmethod
    def from_peft_dict(cls, d: dict) -> TrainableTokensConfig:
        check_fields(d, {"token_indices", "target_modules", "init_weights"}, cls.peft_type)
        # peft writes the embedding's full name as a string ("model.embed_tokens"): a regex on the whole name
        return cls(token_indices=list(d.get("token_indices") or []), targets=targets_from_peft(d.get("target_modules")))
