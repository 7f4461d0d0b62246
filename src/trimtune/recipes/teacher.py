"""The teacher of a distillation run and the callback that trains against it (recipe section ``distill``)."""

from __future__ import annotations

import copy

from torch import nn

from ..training.distill import Distiller
from .build import Loaders
from .rebuild import load_source, parent_source
from .schema import Recipe


def load_teacher(recipe: Recipe, model: nn.Module, labels: list[str] | None) -> nn.Module:
    """``distill.teacher`` when given (a run, a shrink output or a HF directory); else the run a shrink
    output was cut from, or the directory a one-shot prune output was pruned from; else a copy of the
    model as loaded, before the method and any pruning.
    Call it right after loading, so the copy is the dense model."""
    source = recipe.distill.teacher or parent_source(recipe.model)
    if source is None:
        return copy.deepcopy(model)
    section = recipe.model.model_copy(update={"path": source})
    teacher, _ = load_source(section, labels)
    return teacher


def distiller(recipe: Recipe, model: nn.Module, teacher: nn.Module, loaders: Loaders) -> Distiller:
    """The callback; hidden-state layers read their widths from one training batch, and ``augment``
    checks on it that the inputs are token ids (refused before training starts)."""
    config = recipe.distill.build()
    example = next(iter(loaders.train)) if config.hidden_layers or config.augment else None
    return Distiller(model, teacher, config, example_batch=example)
