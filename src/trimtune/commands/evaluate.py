"""``trimtune eval RUN_DIR``: evaluate a run's model (adapter, diff, masks as saved) on its eval data."""

from __future__ import annotations

from .common import add_quiet, add_run_dir, logger, show
from .perplexity import add_perplexity_arguments, run_perplexity


def add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a run's model on its eval data (or other data via --set)",
                              description="Rebuilds the model a run saved and evaluates it; writes eval.json into the run directory.")
    add_run_dir(p, optional=True)  # optional: --perplexity FILE --model DIR needs no run
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="override the run's recipe, e.g. --set data.eval=test.csv")
    add_perplexity_arguments(p)
    add_quiet(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from trimtune.outputs import write_json

    from ..recipes.run import evaluate_run, load_run

    if args.perplexity is not None:
        return run_perplexity(args)
    if args.run_dir is None:
        raise ValueError("give RUN_DIR, or --perplexity FILE with --model DIR")
    loaded = load_run(args.run_dir, args.overrides, check_base=args.check_base)
    loaders = loaded.loaders()
    if loaders.eval is None:
        raise ValueError("the run has no eval data (data.eval_fraction is 0 and no data.eval); pass --set data.eval=FILE")
    logger(args)(f"evaluating {args.run_dir} on {loaded.recipe.data.eval or 'the held-out split'}")
    metrics = evaluate_run(loaded.model, loaders)
    write_json(args.run_dir / "eval.json", metrics)
    show("eval", metrics)
    return 0
