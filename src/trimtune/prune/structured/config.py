"""What a structured (width and depth) LLM shrink is asked to do, checked before anything is read."""

from __future__ import annotations

from dataclasses import dataclass

from ...core.config import ConfigError, check_choice, check_positive_int

IMPORTANCES = ("activation", "fluctuation", "wanda")
DEPTH_METRICS = ("block-influence", "angular")
REPAIRS = ("none", "bias", "lstsq")
GQA_MODES = ("kv", "query")


def _check_ratio(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a fraction in [0, 1) of the structures to remove, got {value!r}")


@dataclass
class StructuredConfig:
    """heads / ffn / hidden: the fraction of attention heads (per layer), FFN channels (per layer) and
    hidden (embedding) channels (the same ones in every layer) to remove. drop_layers: how many whole
    blocks to remove. importance: how heads, FFN and hidden channels are scored from calibration
    activations: "activation" (mean activation magnitude, Minitron), "fluctuation" (FLAP: variance of
    the input channel x the squared norm of its weight column) or "wanda" (|W|·‖X‖ summed over every
    weight the structure owns). depth_metric: "block-influence" (ShortGPT: 1 - cos(x_in, x_out),
    the lowest blocks go) or "angular" (Gromov et al.: the run of ``drop_layers`` consecutive blocks
    whose input and output are closest in angle goes). repair: what fixes the projection that reads
    the removed heads / channels (o_proj, down_proj): "none", "bias" (FLAP's bias compensation: the
    removed inputs' mean contribution moves into the bias) or "lstsq" (a least-squares refit of the
    kept columns against the unpruned projection's output, damped by percdamp x mean(diag H) like
    SparseGPT's Hessian). gqa: under grouped-query attention remove whole KV groups ("kv") or the
    same number of query heads from every group ("query"). batch_tokens: calibration samples run
    together in forwards of up to this many tokens (padding never enters a statistic). round_to: the
    kept FFN and hidden widths are rounded to a multiple of this (1: as the ratio says); runtimes'
    kernels work in blocks along a row (llama.cpp processed prompts slower than the dense model with
    1014 FFN channels left of 1536), so 32 or 64 keeps the removed work a saving everywhere."""

    heads: float = 0.0
    ffn: float = 0.0
    hidden: float = 0.0
    drop_layers: int = 0
    importance: str = "fluctuation"
    depth_metric: str = "block-influence"
    repair: str = "lstsq"
    gqa: str = "kv"
    percdamp: float = 0.01
    batch_tokens: int = 2048
    round_to: int = 1

    def __post_init__(self):
        for name in ("heads", "ffn", "hidden"):
            _check_ratio(name, getattr(self, name))
        if isinstance(self.drop_layers, bool) or not isinstance(self.drop_layers, int) or self.drop_layers < 0:
            raise ConfigError(f"drop_layers must be an integer >= 0 (whole blocks to remove), got {self.drop_layers!r}")
        check_choice("importance", self.importance, IMPORTANCES)
        check_choice("depth_metric", self.depth_metric, DEPTH_METRICS)
        check_choice("repair", self.repair, REPAIRS)
        check_choice("gqa", self.gqa, GQA_MODES)
        if isinstance(self.percdamp, bool) or not isinstance(self.percdamp, (int, float)) or self.percdamp < 0:
            raise ConfigError(f"percdamp must be a number >= 0, got {self.percdamp!r}")
        check_positive_int("batch_tokens", self.batch_tokens)
        check_positive_int("round_to", self.round_to)
        if not (self.heads or self.ffn or self.hidden or self.drop_layers):
            raise ConfigError("nothing to remove: set at least one of heads, ffn, hidden (fractions) or drop_layers (a count)")

    @property
    def needs_dense_pass(self) -> bool:
        """Hidden channels and blocks are chosen once for the whole model, from the dense model's activations."""
        return bool(self.hidden or self.drop_layers)
