"""``trimtune shrink RUN_DIR``: remove whole heads / FFN units / channels of a run's model for
real (by magnitude, or exactly those a structured pruning run masked) and save the smaller model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_quiet, logger, show


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
    p.add_argument("run_dir", type=Path, help="a directory written by tune, prune or diff")
    p.add_argument("--out", type=Path, required=True, help="directory for the shrunk model and shrink.json")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=fraction, help="fraction of each group's units to remove, by group magnitude (0 < RATIO < 1)")
    how.add_argument("--from-masks", action="store_true", help="remove exactly the units a structured `prune` run zeroed")
    p.add_argument("--structures", default="heads,ffn", help="transformers: which of heads,ffn to shrink (default: %(default)s)")
    p.add_argument("--round-to", type=int, default=1, help="keep a multiple of this many units per group (default: 1)")
    p.add_argument("--latency", action="store_true", help="also time the model before and after")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_quiet(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    import json
    import shutil

    from ..core.io.atomic import write_json
    from ..recipes.build import example_inputs
    from ..recipes.run import evaluate_run, load_run
    from ..shrinking import save_shrunk, shrink

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    loaded = load_run(args.run_dir)
    loaders = loaded.loaders()
    inputs = example_inputs(loaders)
    before = evaluate_run(loaded.model, loaders)
    report = shrink(loaded.model, args.ratio or 0.0, example_inputs=inputs, structures=tuple(args.structures.split(",")),
                    from_masks=args.from_masks, round_to=args.round_to, measure_latency=args.latency)
    logger(args)(report.table())
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    save_shrunk(loaded.model, args.out / "model")
    write_json(args.out / "shrink.json", json.loads(report.to_json()))
    # source: the run this model was cut from, the default teacher when a tune recovers it by distillation
    summary = {"labels": loaded.labels, "source": str(args.run_dir.resolve()), "before": before, "after": evaluate_run(loaded.model, loaders)}
    write_json(args.out / "summary.json", summary)
    show("shrink", {label: [before, after] for label, before, after in report.totals()})
    return 0
