"""``trimtune report RUN_DIR``: Markdown / HTML with PNG plots, and JSON (see ``trimtune/report.py``)."""

from __future__ import annotations

from pathlib import Path

from .common import add_quiet, show


def add_report(subparsers) -> None:
    p = subparsers.add_parser("report", help="write a Markdown/HTML report with plots of a run directory",
                              description="Plots what RUN_DIR holds into RUN/report/ with report.md or .html and report.json: for a "
                              "pruning run, accuracy dense vs pruned vs recovered (and the teacher's), accuracy and sparsity "
                              "over the steps, size and speed dense vs pruned, what each layer lost; also the loss curve, "
                              "sparsity per layer, shrink before/after, AdaLoRA ranks.")
    p.add_argument("run_dir", type=Path, help="a directory written by tune, prune, diff or shrink")
    p.add_argument("--format", choices=("md", "html", "both"), default="md", help="report document (default: %(default)s)")
    add_quiet(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..run_report import build_report

    formats = ("md", "html") if args.format == "both" else (args.format,)
    show("report", build_report(args.run_dir, formats))
    return 0
