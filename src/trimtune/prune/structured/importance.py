"""Scores of heads, FFN channels and hidden channels from calibration statistics, and the choice of
what to keep. Higher is more important; the lowest go.

- ``activation`` (Minitron): a head's mean ‖output‖₂ over tokens, a channel's mean |activation|.
- ``fluctuation`` (FLAP): Var(x_j) · ‖W[:, j]‖² of the projection that reads channel j.
- ``wanda``: |W|·‖X‖ summed over every weight entry the structure owns: the reading columns and,
  where the structure also has producing rows (q/k/v for a head, up/gate for an FFN channel), those.
"""

from __future__ import annotations

import torch

from ...core.config import ConfigError
from .stats import ChannelStats


def column_scores(metric: str, stats: ChannelStats, reader_weights: list[torch.Tensor]) -> torch.Tensor:
    """Per input channel of the reading projections (canonical (out, in) weights)."""
    if metric == "activation":
        return stats.mean_abs
    if metric == "fluctuation":
        return stats.variance * sum(w.float().square().sum(0) for w in reader_weights)
    return stats.norm * sum(w.float().abs().sum(0) for w in reader_weights)


def row_scores(weight: torch.Tensor, input_stats: ChannelStats) -> torch.Tensor:
    """Wanda over a producing projection's rows: Σ_j |W[r, j]| · ‖X_j‖."""
    return weight.float().abs() @ input_stats.norm


def per_unit(channel_scores: torch.Tensor, width: int) -> torch.Tensor:
    return channel_scores.view(-1, width).sum(1)


def removed_count(ratio: float, units: int, what: str, round_to: int = 1) -> int:
    """round(ratio · units), never all of them (checked against the config before any work); with
    ``round_to`` the kept count is the nearest multiple of it that is at most ``units``."""
    count = int(round(ratio * units))
    if count >= units:
        raise ConfigError(f"{what}: removing {ratio:g} of {units} would leave none; choose a smaller ratio")
    if round_to > 1 and count:
        keep = round((units - count) / round_to) * round_to
        keep = keep if 0 < keep <= units else (units // round_to) * round_to
        if keep == 0:
            raise ConfigError(f"{what}: round_to {round_to} is more than the {units} there are; choose a smaller round_to")
        count = units - keep
    return count


def keep_top(scores: torch.Tensor, remove: int) -> list[int]:
    """Indices of the ``len(scores) - remove`` highest scores, ascending (ties: the earlier index stays)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return sorted(order[: len(scores) - remove].tolist())


def choose_heads(q_scores: torch.Tensor, kv_scores: torch.Tensor, ratio: float, mode: str) -> tuple[list[int], list[int]]:
    """(kept query heads, kept KV heads). ``mode="kv"``: whole KV groups (a KV head and its query
    heads) go; ``"query"``: every group loses the same number of query heads and keeps its KV head."""
    q_heads, kv_heads = len(q_scores), len(kv_scores)
    rep = q_heads // kv_heads
    if rep == 1 or mode == "kv":
        group_scores = q_scores.view(kv_heads, rep).sum(1) + kv_scores
        kv_keep = keep_top(group_scores, removed_count(ratio, kv_heads, "heads (KV groups)"))
        return [g * rep + j for g in kv_keep for j in range(rep)], kv_keep
    remove = removed_count(ratio, rep, "heads (query heads per KV group)")
    q_keep = [g * rep + j for g in range(kv_heads) for j in keep_top(q_scores[g * rep:(g + 1) * rep], remove)]
    return q_keep, list(range(kv_heads))
