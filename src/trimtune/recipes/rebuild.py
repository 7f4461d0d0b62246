"""Rebuilding models from what earlier commands wrote: ``load_run`` (a tune, prune or diff run
directory, as the run left it) and ``load_source`` (what a recipe's ``model.path`` or
``distill.teacher`` names: a Hugging Face directory, a run directory, or a ``trimtune shrink`` output).

A run or shrink directory used as a model is taken with its adapter merged in (masks kept as zeros in
the weights), so a new method starts from what that run ended with. Its parent — the model a shrink
started from — is the default teacher of a distillation run (``parent_source``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import trimtune as tt
from trimtune.outputs import HISTORY_FILE, RUN_MARKER, SOURCE_FILE, read_safetensors

from .build import Records, load_model, make_loaders, read_data
from .load import RESOLVED_NAME, load_recipe
from .method_runs import method_run
from .schema import ModelSection, Recipe

ADAPTER = "default"  # the name a run's adapter has in the model
MARKER = RUN_MARKER  # written first: only a directory holding it may be overwritten
SHRINK_FILE = "shrink.json"  # what `trimtune shrink --out DIR` writes, with DIR/model/ and summary.json


@dataclass
class Run:
    recipe: Recipe
    model: nn.Module
    tokenizer: object
    labels: list[str] | None

    def loaders(self):
        """The recipe's data as the run saw it (its labels, in its order)."""
        records = read_data(self.recipe)
        return make_loaders(self.recipe, Records(records.train, records.eval, self.labels), self.tokenizer, self.model)


def is_run_dir(path: Path) -> bool:
    return (path / MARKER).is_file()


def is_shrink_dir(path: Path) -> bool:
    return (path / SHRINK_FILE).is_file() and (path / "model" / HISTORY_FILE).is_file()


def load_source(section: ModelSection, labels: list[str] | None, trained_for: str | None = None) -> tuple[nn.Module, object]:
    """(model, tokenizer) for ``section.path``: a run or shrink directory (merged, checked against
    ``labels``), else ``build.load_model`` (a Hugging Face directory, minilm, lenet; ``trained_for``:
    refused if any weight, a head included, would be new)."""
    path = Path(section.path)
    if is_run_dir(path):
        run = load_run(path)
        return _merged(run.model), _same_labels(run, labels, path)
    if is_shrink_dir(path):
        source = _shrink_source(path)
        run = load_run(source)  # the model exactly as shrink started from it, so the slices replay onto it
        model = tt.load_shrunk(path / "model", model=run.model, with_adapters=False)  # the run's adapter is on it
        return _merged(model), _same_labels(run, labels, path)
    return load_model(section, labels, trained_for)


def parent_source(section: ModelSection) -> str | None:
    """The dense model a smaller one came from: the run a shrink output was cut from, or the directory
    a ``trimtune prune --model`` output was pruned from; None for other sources."""
    path = Path(section.path)
    if is_shrink_dir(path):
        return str(_shrink_source(path))
    if (path / SOURCE_FILE).is_file():
        source = Path(json.loads((path / SOURCE_FILE).read_text(encoding="utf-8"))["source"])
        if not source.is_dir():
            raise FileNotFoundError(f"{path} was pruned from {source}, which is gone; set distill.teacher to the dense model")
        return str(source)
    return None


def load_run(run_dir: str | Path, overrides: list[str] = (), check_base: bool = True) -> Run:
    """The model as the run left it (base, masks, adapter or diff, trained weights); ``overrides``
    change the recipe's data (e.g. ``data.eval=other.csv`` to evaluate elsewhere); ``check_base=False``
    loads the adapter even onto a base that differs from the one it was trained on (``--no-check-base``)."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a trimtune run directory (no {MARKER}); give the --out of a tune, prune or diff run")
    if not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"the run in {run_dir} did not finish (no summary.json); run it again with --overwrite")
    recipe = load_recipe(run_dir / RESOLVED_NAME, overrides)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    torch.manual_seed(recipe.train.seed)
    model, tokenizer = load_source(recipe.model, summary["labels"])
    if (run_dir / "model.safetensors").is_file():
        model.load_state_dict(read_safetensors(run_dir / "model.safetensors", "run's trained weights")[0])
    if (run_dir / "pruned.safetensors").is_file():
        tt.load_sparse(model, run_dir / "pruned.safetensors", strict=False)
    method = recipe.method.build(recipe.model) if recipe.method else None
    if method is not None:
        run = method_run(method)
        if run.prepare_base is not None:  # e.g. QLoRA's adapter was trained (and fingerprinted) on a 4-bit base
            run.prepare_base(model, method)
        if (run_dir / run.artifact).is_dir():
            tt.method_for_config(method).load(model, run_dir / run.artifact, ADAPTER, check_base=check_base)
    return Run(recipe, model.eval(), tokenizer, summary["labels"])


def load_run_or_shrink(path: str | Path, check_base: bool = True) -> Run:
    """A run directory as the run left it, or a ``trimtune shrink`` output rebuilt onto its source run's
    model; adapters stay unmerged (the caller decides whether to fold them in)."""
    path = Path(path)
    if not is_shrink_dir(path):
        return load_run(path, check_base=check_base)
    run = load_run(_shrink_source(path), check_base=check_base)
    run.model = tt.load_shrunk(path / "model", model=run.model, with_adapters=False).eval()  # the run carries its adapter
    return run


def _merged(model: nn.Module) -> nn.Module:
    """The plain model with the run's adapter folded in (pruned entries stay zero in the weights)."""
    tt.merge(model, keep_sparsity=True)
    return tt.unload(model, merge_adapters=True).train()


def _same_labels(run: Run, labels: list[str] | None, path: Path) -> object:
    if labels is not None and run.labels is not None and list(labels) != list(run.labels):
        raise ValueError(f"{path} was trained with labels {run.labels}, but this recipe's data has {labels}; "
                         "set data.labels to the run's labels")
    return run.tokenizer


def _shrink_source(path: Path) -> Path:
    summary = json.loads((path / "summary.json").read_text(encoding="utf-8")) if (path / "summary.json").is_file() else {}
    if not summary.get("source"):
        raise FileNotFoundError(f"{path}/summary.json does not name the run it was shrunk from ('source'); shrink the run again "
                                "with this trimtune")
    return Path(summary["source"])
