"""Diff pruning (Guo et al., 2021): a task as a sparse diff over a frozen model, stored as indices + values."""

from ...core.method import WeightDeltaMethod, register
from ...core.state import state_of
from .artifact import load_diff, save_diff
from .delta import DiffConfig, DiffDelta, make_diff
from .penalty import DiffPenalty, diff_optimizer, diff_penalty, project_diffs


@register
class Diff(WeightDeltaMethod):
    name = "diff"
    config = DiffConfig

    def make_delta(self, layer, config: DiffConfig) -> DiffDelta:
        return make_diff(layer, config)

    def apply(self, model, config: DiffConfig, name: str) -> None:
        super().apply(model, config, name)
        if config.penalty_weight:  # the sparsity loss trains with the model, whoever runs trimtune.train
            state_of(model).callbacks[name] = DiffPenalty(config.penalty_weight, name)

    def save(self, model, path, name):
        return save_diff(model, path, name)

    def load(self, model, path, name, check_base=True, activate=True):
        return load_diff(model, path, name, check_base=check_base, activate=activate)


__all__ = ["DiffConfig", "DiffDelta", "DiffPenalty", "diff_optimizer", "diff_penalty", "load_diff", "project_diffs", "save_diff"]
