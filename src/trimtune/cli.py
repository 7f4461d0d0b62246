"""The ``trimtune`` command. Exit codes: 0 success, 1 failure, 2 usage error (argparse's convention).

Each subcommand is a pair (``add_<name>(subparsers)`` building its parser, a handler ``(args) -> int``)
listed in ``SUBCOMMANDS``; adding a subcommand is adding one such pair and one line there.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .commands.evaluate import add_eval
from .commands.export import add_export, add_merge
from .commands.generate import add_generate
from .commands.report import add_report
from .commands.runs import add_runs
from .commands.shrink import add_shrink

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _offline() -> None:
    """trimtune never needs the model hub: everything it loads is a local directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _silence_libraries() -> None:
    """--quiet: transformers' load reports, progress bars and warnings too, not only ours."""
    import warnings

    warnings.simplefilter("ignore")
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    disable_progress_bars()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (tqdm and test captures replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _log_lines(quiet: bool) -> None:
    """Training log lines (trimtune.train's MetricsLogger) as plain lines on stderr, unless --quiet."""
    logger = logging.getLogger("trimtune")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="a short tour: LoRA fine-tuning of all-MiniLM-L6-v2 on the shipped demo texts, and more",
        description="Runs each demo step in order and prints its figures (a few minutes on 2 CPU cores).",
    )
    p.add_argument("--out", default="trimtune-demo", help="directory for the saved adapter and figures (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a reduced run (seconds, for tests); its figures mean little")
    p.add_argument("--quiet", action="store_true", help="no progress bars or details, only results")
    p.set_defaults(handler=run_demo_command)


def run_demo_command(args) -> int:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, quiet=args.quiet)
    return EXIT_OK


SUBCOMMANDS = [add_demo, add_runs, add_shrink, add_merge, add_eval, add_generate, add_report, add_export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trimtune",
        description="Prune (trim) and parameter-efficiently fine-tune (tune) PyTorch / Hugging Face models.",
        epilog="Exit codes: 0 success, 1 failure, 2 usage error. Run `trimtune COMMAND --help` for details.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits with 2 and a message on usage errors
    _offline()
    _log_lines(quiet=getattr(args, "quiet", False))
    if getattr(args, "quiet", False):
        _silence_libraries()
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("trimtune: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as err:  # one clear line for the user; --debug shows where it came from
        if args.debug:
            raise
        print(f"trimtune {args.command}: error: {type(err).__name__}: {_in_flags(str(err), args)}", file=sys.stderr)
        return EXIT_USAGE if _is_usage_error(err) else EXIT_FAILURE


def _in_flags(message: str, args) -> str:
    """The API's advice in this command's words: its ``--no-check-base`` flag, not the argument ``check_base=False``."""
    if hasattr(args, "check_base"):
        return message.replace("load with check_base=False", "pass --no-check-base").replace("check_base=False", "--no-check-base")
    return message


def _is_usage_error(err: Exception) -> bool:
    """A recipe or --set that does not validate is a usage error, like a bad command-line flag."""
    from trimtune import ConfigError
    from .recipes.load import RecipeError

    return isinstance(err, (RecipeError, ConfigError))  # a config field whose value is not allowed


if __name__ == "__main__":
    sys.exit(main())
