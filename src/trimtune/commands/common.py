"""What several subcommands share: recipe arguments, the logger --quiet silences, printing results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_recipe_arguments(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("recipe", type=Path, nargs="?" if optional else None, help="the run's YAML recipe (see examples/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="override a recipe value, e.g. --set train.lr=3e-4 --set method.r=4 (repeatable)")
    p.add_argument("--out", type=Path, help="run directory (default: the recipe's `output`)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    add_quiet(p)


def add_run_dir(p: argparse.ArgumentParser, made_by: str = "tune, prune or diff", optional: bool = False,
                metavar: str | None = None) -> None:
    p.add_argument("run_dir", type=Path, nargs="?" if optional else None, metavar=metavar, help=f"a directory written by {made_by}")
    p.add_argument("--no-check-base", dest="check_base", action="store_false",
                   help="load the run's adapter or diff even if the base model differs from the one it was made on")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines, only results and errors")


def logger(args):
    """Log lines go to stdout unless --quiet."""
    return (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))


def show(title: str, data) -> None:
    """A result, always printed (also with --quiet), as JSON scripts can read."""
    print(f"{title}: {json.dumps(data, sort_keys=True)}", flush=True)
