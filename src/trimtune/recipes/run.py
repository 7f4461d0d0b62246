"""A recipe run: read data, load the model, apply the method, prune, train, evaluate, and save
what the run produced into its directory. ``load_run`` rebuilds the trained model from that
directory (for eval, merge, export and shrink).

A run directory holds ``trimtune_run.json`` (the marker), ``recipe.yaml`` (resolved), ``summary.json`` (labels, figures),
``metrics.json`` (losses, evaluations) and, as the run made them: ``adapter/`` (PEFT format),
``diff/`` (sparse diff), ``pruned.safetensors`` (masked weights, compressed), ``model.safetensors``
(all weights, when the base itself was trained), ``sparsity.json``, ``prune_story.json`` (dense /
pruned evals, sparsity per step, size dense vs pruned), ``adalora_ranks.json``. With a ``distill``
section the teacher is made right after loading (``recipes/teacher.py``) and its metrics go into the summary.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

import trimtune as tt
from trimtune.outputs import (
    OutputError,
    check_replaceable,
    fresh_partial,
    partial_path,
    swap_in,
    write_json,
    write_safetensors,
    written_by_trimtune,
)

from .build import Loaders, example_inputs, make_loaders, prune_config, read_data
from .load import save_recipe
from .method_runs import method_run
from .rebuild import ADAPTER, MARKER, Run, load_run, load_source  # noqa: F401  (load_run, Run: re-exported)
from .schema import Recipe
from .story import PruneStory, size_figures
from .teacher import distiller, load_teacher


def check_run_dir(path: str | Path) -> Path:
    """Where ``--resume`` continues: the unfinished build of ``path`` (``.NAME.partial``) if there is
    one, else ``path`` itself if it is a run directory."""
    path = Path(path)
    partial = partial_path(path)
    if (partial / MARKER).is_file():
        return partial
    if (path / MARKER).is_file():
        return path
    raise FileNotFoundError(f"--resume: {path} is not a trimtune run directory (no {MARKER}); start the run without --resume")


def prepare_run_dir(path: str | Path, overwrite: bool, sources: Iterable[str | Path] = ()) -> Path:
    """The build directory of a new run into ``path``: checked first (an existing ``path`` is replaced
    only with ``overwrite``, only if trimtune wrote it, and never when it is or holds one of ``sources``,
    what the run reads), built beside it, swapped in by ``finish_run_dir`` when complete; a failed run
    leaves ``path`` as it was and blocks no rerun. An interrupted run's checkpoints are discarded only
    with ``overwrite``: starting over is explicit."""
    path = check_replaceable(path, overwrite, sources)
    _check_no_resumable_run(path, overwrite)
    return fresh_partial(path, MARKER, {"format": "trimtune.run/1"})


def _check_no_resumable_run(path: Path, overwrite: bool) -> None:
    checkpoints = partial_path(path) / "checkpoints"
    if overwrite or not _has_checkpoints(partial_path(path)):
        return
    raise OutputError(f"an interrupted run of {path} can be resumed from its checkpoints in {checkpoints}: continue it by "
                      "running the same command with --resume, or pass --overwrite to discard them and start over")


def discard_unresumable(work: Path, path: str | Path) -> bool:
    """A failed run's build directory goes unless it holds checkpoints to ``--resume`` from (a full disk
    is left nothing useless to fill it); only a build directory trimtune marked; True if it went."""
    work = Path(work)
    if work != Path(path) and work == partial_path(path) and written_by_trimtune(work) and not _has_checkpoints(work):
        shutil.rmtree(work, ignore_errors=True)
        return True
    return False


def _has_checkpoints(work: Path) -> bool:
    checkpoints = work / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.iterdir())


def finish_run_dir(work: Path, path: str | Path) -> None:
    if Path(work) != Path(path):
        swap_in(Path(work), Path(path))


def run_recipe(recipe: Recipe, out: Path, quiet: bool = False, log: Callable[[str], None] = print, resume: bool = False) -> dict:
    """Carry out ``recipe`` into ``out``. Under torchrun / accelerate every process runs this; the
    data is split across them (``data.batch_size`` stays the global batch), rank 0 writes."""

    info = tt.init_distributed()
    if info.rank != 0:
        log = lambda message: None
    elif not resume:  # a resumed run keeps its recipe until its checkpoint has accepted this one (below)
        save_recipe(recipe, out)
    records = read_data(recipe)
    torch.manual_seed(recipe.train.seed)
    model, tokenizer = load_source(recipe.model, records.labels)
    loaders = _share(make_loaders(recipe, records, tokenizer, model), recipe, info.world_size)
    if loaders.data_report:
        log(f"data: {_data_line(loaders.data_report)}")
    before = evaluate_run(model, loaders)
    log(f"model {recipe.model.path} ({type(model).__name__}); before: {_fmt(before)}")
    teacher = load_teacher(recipe, model, records.labels, tokenizer) if recipe.distill else None  # before the method and pruning
    if teacher is not None:
        teacher_metrics = evaluate_run(teacher, loaders)
        log(f"teacher: {_fmt(teacher_metrics)}")
    method = recipe.method.build(recipe.model) if recipe.method else None
    if method is not None:
        tt.apply(model, method)
        trainable, total = tt.trainable_parameters(model)
        log(f"{recipe.method.type}: {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f} %)")
    t = recipe.train
    steps = tt.optimizer_steps(loaders.train, t.epochs, t.max_steps, t.grad_accum) if (t.epochs or t.max_steps) else 0
    callbacks, story = _callbacks(recipe, model, loaders, steps)
    if teacher is not None:
        callbacks.append(distiller(recipe, model, teacher, loaders))
    result = None
    if steps:
        logger = tt.MetricsLogger(out / "metrics.csv", out / "tensorboard" if t.tensorboard else None, every=t.log_every)
        checkpoint = tt.CheckpointConfig(out / "checkpoints", t.checkpoint_every, t.keep_checkpoints, full_model=method is None,
                                         sharded=True if recipe.distributed.strategy == "fsdp" else None)  # resumable on any world size
        result = tt.train(
            tt.parallel_model(model, info, recipe.distributed.strategy, recipe.distributed.block_classes,
                           recipe.distributed.layer_units), loaders.train, epochs=t.epochs or None, max_steps=t.max_steps, lr=t.lr,
            optimizer=recipe.optimizer.factory() if recipe.optimizer else None,  # LoRA+'s groups (None: AdamW)
            grad_accum=t.grad_accum, scheduler=tt.linear_schedule(t.warmup_steps), clip=t.clip_norm,
            eval_data=loaders.eval if t.eval_every else None, eval_every=t.eval_every, metric=loaders.metric,
            loss_fn=loaders.loss_fn, callbacks=[*callbacks, logger], progress=not quiet and info.rank == 0,
            checkpoint=checkpoint, resume=resume, run_config=_run_config(recipe),
        )
        model = tt.unwrap_model(model)
        if resume and info.rank == 0:
            save_recipe(recipe, out)  # the checkpoint accepted it: only fields that may change did (e.g. checkpoint_every)
        log(f"trained {result.steps} steps in {result.wall_time:.1f} s; last loss {result.losses[-1]:.4f}")
    elif recipe.prune:
        tt.prune(model, prune_config(recipe.prune, model, loaders), sparsity=recipe.prune.sparsity)
    summary = {"labels": records.labels, "before": before, "steps": steps, "processes": info.world_size}
    if loaders.data_report:
        summary["data"] = loaders.data_report
    if teacher is not None:
        summary["teacher"] = teacher_metrics
    if method is not None and method_run(method).finish is not None:
        entries, message = method_run(method).finish(model, ADAPTER, method)
        summary.update(entries)
        log(message)
    summary["after"] = evaluate_run(model, loaders)
    log(f"after: {_fmt(summary['after'])}")
    sharded = tt.is_sharded(model)
    if sharded:  # every rank gathers its shard of the adapter; rank 0 writes
        _save_method_files(model, method, out)
    if info.rank != 0:
        return summary
    summary.update(_save_artifacts(model, recipe, method, out, method_files=not sharded))
    if recipe.prune:
        record = story.record if story is not None else {}
        size = size_figures(model, example_inputs(loaders), summary.get("sparse_file") or {})
        write_json(out / "prune_story.json", {**record, "size": size})
    write_json(out / "metrics.json", _metrics(result))
    write_json(out / "summary.json", summary)
    return summary


def _run_config(recipe: Recipe) -> dict:
    """What a checkpoint must agree with to be resumed: the recipe minus where and how often to
    write, and how FSDP cuts units (memory only; the results and the sharded checkpoints do not
    depend on it): those may change between an interrupted run and its resumption."""
    return recipe.model_dump(mode="json", exclude={"output": True, "train": {"checkpoint_every", "keep_checkpoints", "log_every", "tensorboard"},
                                                   "distributed": {"layer_units"}})


def _share(loaders: Loaders, recipe: Recipe, world_size: int) -> Loaders:
    """Each process takes its part of every global batch (a seeded DistributedSampler; also for one
    process, so 1 and N processes see the same global batches and end with the same weights)."""

    batch = recipe.data.batch_size
    if batch % world_size:
        raise ValueError(f"data.batch_size ({batch}) is the global batch and must divide by the {world_size} processes")
    train = loaders.train
    loaders.train = tt.distributed_loader(train.dataset, batch // world_size, shuffle=True, seed=recipe.data.seed, collate_fn=train.collate_fn)
    return loaders


def _callbacks(recipe: Recipe, model: nn.Module, loaders: Loaders, steps: int) -> list:
    """The run's own training callbacks; the method's (diff's penalty, AdaLoRA's budget) ride on the model."""
    callbacks, story = [], None
    if recipe.prune and steps:
        p = recipe.prune
        schedule = tt.PruneSchedule.for_timing(p.timing, p.sparsity, steps, p.schedule, rounds=p.rounds)
        story = PruneStory(schedule, lambda m: evaluate_run(m, loaders))  # after the pruning callback: sees each step pruned
        callbacks += [tt.PruningCallback(prune_config(p, model, loaders), schedule), story]
    return callbacks, story


def evaluate_run(model: nn.Module, loaders: Loaders) -> dict | None:
    """Metrics on the eval loader (None when the run has no eval data)."""
    return tt.evaluate(model, loaders.eval, loaders.metric, loss_fn=loaders.loss_fn) if loaders.eval is not None else None


def _data_line(reports: dict) -> str:
    """One line per run: what tokenising kept, cut and dropped, and how packed examples are kept apart."""
    parts = []
    for split, r in reports.items():
        part = f"{split} {r['kept']} of {r['examples']} examples, {r['truncated']} cut to {r['max_length']} tokens ({r['dropped']} dropped)"
        if "windows" in r:
            part += f", packed into {r['windows']} windows ({100 * r['fill']:.0f} % full, attention by {r['attention']})"
        parts.append(part)
    return "; ".join(parts)


def _fmt(metrics: dict | None) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) if metrics else "no eval data"


def _metrics(result) -> dict:
    if result is None:
        return {"losses": [], "eval_history": [], "grad_norms": []}
    history = [{"step": step, **values} for step, values in result.eval_history]
    return {"losses": result.losses, "eval_history": history, "grad_norms": result.grad_norms, "wall_time": result.wall_time}


def _save_artifacts(model: nn.Module, recipe: Recipe, method, out: Path, method_files: bool = True) -> dict:
    saved = {}
    if recipe.prune:
        saved["sparse_file"] = tt.save_sparse(model, out / "pruned.safetensors")
        write_json(out / "sparsity.json", tt.sparsity_report(model).to_dict())
    elif method is None:  # the base itself was trained: keep all of it
        write_safetensors(out / "model.safetensors", {k: v.detach().contiguous() for k, v in model.state_dict().items()}, {})
    if method_files:
        _save_method_files(model, method, out)
    if method is not None:
        run_files = method_run(method).run_files
        for file_name, record in (run_files(model, ADAPTER, method) if run_files else {}).items():
            write_json(out / file_name, record)
    return saved


def _save_method_files(model: nn.Module, method, out: Path) -> None:
    """The adapter, or the method's own files such as a diff (a collective under FSDP: every rank calls it)."""
    if method is not None:
        tt.save_adapter(model, out / method_run(method).artifact)  # the method's own files, or peft's
