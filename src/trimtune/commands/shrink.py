"""``trimtune shrink RUN_DIR``: remove whole heads / FFN units / channels of a run's model for
real (by magnitude, or exactly those a structured pruning run masked) and save the smaller model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_quiet, add_run_dir, logger, show
from .llm_shrink import SHRINK_FIELDS, add_llm_shrink_arguments, run_llm_shrink, shrink_model_directory


def fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1 (else a usage error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def add_shrink(subparsers) -> None:
    p = subparsers.add_parser("shrink", help="physically remove heads, FFN units or channels of a run's model",
                              description="Rebuilds a run's model, shrinks it (shrink.json: per layer shape before -> after "
                              "and kept indices; params, bytes, MACs before/after) and saves it with its shrink history.")
    add_run_dir(p, made_by="tune, prune or diff (or a YAML recipe with a shrink: section)", optional=True)
    p.add_argument("--out", type=Path, help="directory for the shrunk model (required, except for a recipe with an output)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--ratio", type=fraction, help="fraction of each group's units to remove, by group magnitude (0 < RATIO < 1)")
    how.add_argument("--from-masks", action="store_true", help="remove exactly the units a structured `prune` run zeroed")
    p.add_argument("--structures", default="heads,ffn", help="transformers: which of heads,ffn to shrink (default: %(default)s)")
    p.add_argument("--round-to", type=int, default=1, help="keep a multiple of this many units per group; with --model, FFN and "
                   "hidden widths a multiple of this (e.g. 32 or 64: runtimes' kernels run aligned widths faster; default: 1)")
    p.add_argument("--latency", action="store_true", help="also time the model before and after")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_quiet(p)
    add_llm_shrink_arguments(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    if args.run_dir is not None and args.run_dir.suffix in (".yaml", ".yml") and args.run_dir.is_file():
        return shrink_recipe(args)
    if args.model is not None:
        if args.run_dir is not None or args.ratio is not None or args.from_masks:
            raise ValueError("give either RUN_DIR (with --ratio or --from-masks) or --model DIR (with --heads/--ffn/--hidden/--drop-layers), not both")
        return run_llm_shrink(args)
    if args.run_dir is None or (args.ratio is None and not args.from_masks):
        raise ValueError("`trimtune shrink` needs RUN_DIR with --ratio or --from-masks, or --model DIR with --heads/--ffn/--hidden/--drop-layers")
    return run_run_dir(args)


def shrink_recipe(args) -> int:
    """``trimtune shrink RECIPE``: the recipe's ``model`` shrunk by its ``shrink:`` section."""
    from ..recipes.load import RecipeError, load_recipe

    recipe = load_recipe(args.run_dir, [])
    if recipe.shrink is None:
        raise RecipeError(f"`trimtune shrink RECIPE` needs a shrink: section in {args.run_dir} (e.g. shrink: {{ffn: 0.25, calib: text.txt}})")
    return shrink_model_directory(Path(recipe.model.path), args.out or Path(recipe.output), args.quiet, args.overwrite, args.speed,
                                  **{name: getattr(recipe.shrink, name) for name in SHRINK_FIELDS})


def run_run_dir(args) -> int:
    import json

    from trimtune import save_shrunk, shrink
    from trimtune.outputs import check_replaceable, output_directory, write_json

    from ..recipes.build import example_inputs
    from ..recipes.run import evaluate_run, load_run

    if args.out is None:
        raise ValueError("--out is required: the directory for the shrunk model")
    check_replaceable(args.out, args.overwrite, sources=[args.run_dir])  # before any work
    loaded = load_run(args.run_dir, check_base=args.check_base)
    loaders = loaded.loaders()
    inputs = example_inputs(loaders)
    before = evaluate_run(loaded.model, loaders)
    report = shrink(loaded.model, args.ratio or 0.0, example_inputs=inputs, structures=tuple(args.structures.split(",")),
                    from_masks=args.from_masks, round_to=args.round_to, measure_latency=args.latency)
    logger(args)(report.table())
    after = evaluate_run(loaded.model, loaders)
    # source: the run this model was cut from, the default teacher when a tune recovers it by distillation
    summary = {"labels": loaded.labels, "source": str(args.run_dir.resolve()), "before": before, "after": after}
    with output_directory(args.out, args.overwrite, "shrink", sources=[args.run_dir]) as tmp:
        save_shrunk(loaded.model, tmp / "model")
        write_json(tmp / "shrink.json", json.loads(report.to_json()))
        write_json(tmp / "summary.json", summary)
    show("shrink", {label: [before, after] for label, before, after in report.totals()})
    return 0
