"""The teacher of a distillation run and the callback that trains against it (recipe section ``distill``)."""

from __future__ import annotations

import copy

from torch import nn

import trimtune as tt

from .build import Loaders
from .rebuild import load_source, parent_source
from .schema import Recipe


def load_teacher(recipe: Recipe, model: nn.Module, labels: list[str] | None, tokenizer=None) -> nn.Module:
    """``distill.teacher`` when given (a run, a shrink output or a HF directory); else the run a shrink
    output was cut from, or the directory a one-shot prune output was pruned from; else a copy of the
    model as loaded, before the method and any pruning. A teacher that cannot teach this student (a head
    made up on load, another vocabulary, too few embeddings for the student's token ids) is refused here,
    before training. Call it right after loading, so the copy is the dense model."""
    source = recipe.distill.teacher or parent_source(recipe.model)
    if source is None:
        return copy.deepcopy(model)
    section = recipe.model.model_copy(update={"path": source})
    teacher, teacher_tokenizer = load_source(section, labels, trained_for="a distillation teacher")
    check_vocabulary(source, teacher, teacher_tokenizer, tokenizer)
    return teacher


def check_vocabulary(source, teacher: nn.Module, teacher_tokenizer, tokenizer) -> None:
    """The teacher reads the student's token ids: they must mean the same tokens and fit its embeddings."""
    if tokenizer is None or teacher_tokenizer is None:
        return  # images (LeNet): no tokens
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"distill.teacher {source} has another vocabulary than the student's tokenizer "
                         f"({len(teacher_tokenizer)} vs {len(tokenizer)} tokens, or the same ids for other tokens), so it would "
                         "read the student's token ids as other words; use a teacher with the student's tokenizer")
    embeddings = teacher.get_input_embeddings() if hasattr(teacher, "get_input_embeddings") else None
    if embeddings is not None and embeddings.num_embeddings < len(tokenizer):
        raise ValueError(f"distill.teacher {source} embeds {embeddings.num_embeddings} token ids, but the student's tokenizer "
                         f"gives ids up to {len(tokenizer) - 1}; use a teacher whose vocab_size is at least {len(tokenizer)}")


def distiller(recipe: Recipe, model: nn.Module, teacher: nn.Module, loaders: Loaders) -> tt.Distiller:
    """The callback; hidden-state layers read their widths from one training batch, and ``augment``
    checks on it that the inputs are token ids (refused before training starts)."""
    config = recipe.distill.build()
    example = next(iter(loaders.train)) if config.hidden_layers or config.augment else None
    return tt.Distiller(model, teacher, config, example_batch=example)
