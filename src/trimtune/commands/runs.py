"""``trimtune tune | prune | diff RECIPE``: one recipe run each (see ``recipes/run.py``); they
differ only in which recipe section they insist on, so a command always does what its name says."""

from __future__ import annotations

import errno
from pathlib import Path

from ..recipes.load import RecipeError, load_recipe
from .common import add_recipe_arguments, logger, show
from .llm_prune import add_llm_arguments, prune_model_directory, run_llm

RUNS = {
    "tune": ("fine-tune with any method (LoRA, AdaLoRA, QLoRA, IA3, bottleneck, prompt, P-, prefix tuning, diff)",
             lambda r: r.method is not None or r.distill is not None,
             "a `method:` section (e.g. method: {type: lora, r: 8}), or a `distill:` section to train the whole model"),
    "prune": ("mask pruning with any importance, granularity and schedule (optionally with a tuning method)",
              lambda r: r.prune is not None, "a `prune:` section (e.g. prune: {sparsity: 0.5})"),
    "diff": ("diff pruning: train a sparse task diff over the frozen base and save it",
             lambda r: r.method is not None and r.method.type == "diff", "method.type: diff"),
}


def add_runs(subparsers) -> None:
    for name, (summary, _, _) in RUNS.items():
        p = subparsers.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}, as RECIPE describes. "
                                  "Writes the resolved recipe, metrics, summary and artifacts into the run directory.")
        add_recipe_arguments(p, optional=name == "prune")
        if name == "prune":
            add_llm_arguments(p)
        p.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out from its latest checkpoint (same recipe and --set)")
        p.set_defaults(handler=run)


def run(args) -> int:
    from trimtune import init_distributed
    from trimtune.outputs import partial_path

    from ..recipes.run import check_run_dir, discard_unresumable, finish_run_dir, prepare_run_dir, run_recipe

    if args.command == "prune" and getattr(args, "model", None) is not None:
        if args.recipe is not None:
            raise RecipeError("give either RECIPE or --model DIR to `trimtune prune`, not both")
        return run_llm(args)
    if args.recipe is None:
        raise RecipeError(f"`trimtune {args.command}` needs a RECIPE (or, for prune, --model DIR)")
    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.oneshot is not None:
        if args.command != "prune":
            raise RecipeError(f"a oneshot: recipe is run by `trimtune prune`, not `trimtune {args.command}`")
        return prune_model_directory(Path(recipe.model.path), Path(args.out or recipe.output), args.quiet, args.overwrite,
                                     **recipe.oneshot.model_dump())
    _, fits, needs = RUNS[args.command]
    if not fits(recipe):
        raise RecipeError(f"`trimtune {args.command}` needs {needs} in {args.recipe}")
    out = Path(args.out or recipe.output)
    if init_distributed().rank == 0:  # one process prepares the directory; the others wait for it
        logger(args)(f"run directory: {out.resolve()}" + ("" if args.out else " (the recipe's output:, from the current directory)"))
        check_run_dir(out) if args.resume else prepare_run_dir(out, args.overwrite, read_paths(recipe))
    _barrier()
    # The run is built in .OUT.partial and swapped in when complete (see core/io/output_dir.py).
    work = check_run_dir(out) if args.resume else partial_path(out)
    try:
        summary = run_recipe(recipe, work, quiet=args.quiet, log=logger(args), resume=args.resume)
    except BaseException as error:  # the build directory goes, unless it holds checkpoints to resume from
        kept = init_distributed().rank != 0 or not discard_unresumable(work, out)
        if kept and work != out and isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise OSError(error.errno, f"{error.strerror}; the run's checkpoints are kept in {work}: free space, then run "
                          "the same command with --resume", error.filename) from error
        raise
    if init_distributed().rank == 0:
        finish_run_dir(work, out)
        show("result", {"before": summary["before"], "after": summary["after"], "run_dir": str(out)})
    _leave_group()
    return 0


def _leave_group() -> None:
    """Every rank done, then the process group closes before the interpreter's teardown (gloo's threads
    can abort there when a peer's group is still open)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def read_paths(recipe) -> list[str]:
    """The local directories a recipe run reads (its model, its teacher), which --out must not replace."""
    from ..recipes.schema import resolve_model_path

    paths = [recipe.model.path, recipe.distill.teacher if recipe.distill else None]
    return [str(resolve_model_path(p)) for p in paths if p and Path(resolve_model_path(p)).exists()]  # not "lenet" or a hub id

