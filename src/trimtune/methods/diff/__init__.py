"""Diff pruning (Guo et al., 2021): a task as a sparse diff over a frozen model, stored as indices + values."""

from ...core.registry import Method, register
from .artifact import load_diff, save_diff
from .delta import DiffConfig, DiffDelta, make_diff
from .penalty import DiffPenalty, diff_optimizer, diff_penalty, project_diffs


def _callbacks(model, name, config, train_options) -> list:
    weight = getattr(train_options, "diff_penalty", 0.0) if train_options is not None else 0.0
    return [DiffPenalty(weight)] if weight else []


def _finish(model, name, config) -> tuple[dict, str]:
    kept = project_diffs(model, name)  # to the exact density the artifact stores
    return {"diff": kept}, f"diff projected to {kept['kept']:,} of {kept['total']:,} entries"


register(Method("diff", DiffConfig, make_delta=make_diff, save=save_diff, load=load_diff, artifact="diff",
                callbacks=_callbacks, finish=_finish))

__all__ = ["DiffConfig", "DiffDelta", "DiffPenalty", "diff_optimizer", "diff_penalty", "load_diff", "project_diffs", "save_diff"]
