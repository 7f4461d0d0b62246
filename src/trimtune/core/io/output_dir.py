"""Output directories that lose nothing: an existing one is replaced only when trimtune wrote it,
never when it is (or holds) what the command reads, and only once the new one is complete.

The new output is built in a hidden sibling (``.NAME.partial``, same filesystem) and swapped in
by renames when complete: a failure at any point leaves the previous output as it was and nothing
half-written at ``NAME``. Directories trimtune writes carry a marker file; ``--overwrite`` replaces
nothing without one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .atomic import write_json

OUTPUT_MARKER = "trimtune_output.json"  # merge, export, shrink
RUN_MARKER = "trimtune_run.json"  # tune, prune, diff
MARKERS = (OUTPUT_MARKER, RUN_MARKER)


class OutputError(FileExistsError):
    """An output path that must not be written or replaced (the message says why and what to do)."""


def written_by_trimtune(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in MARKERS)


def check_replaceable(path: str | os.PathLike, overwrite: bool, sources: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse, before any work, an output that would lose something; returns ``path``."""
    path = Path(path)
    for source in sources:
        if _within(Path(source), path):
            raise OutputError(f"--out {path} is, or contains, {source}, which this command reads; choose another --out")
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return path
    if not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it, or choose another --out")
    if not written_by_trimtune(path):
        raise OutputError(
            f"{path} exists and was not written by trimtune (it holds no {OUTPUT_MARKER} or {RUN_MARKER}); "
            "refusing to replace it: remove it yourself or choose another --out"
        )
    return path


def check_file_replaceable(path: str | os.PathLike, overwrite: bool, sources: Iterable[str | os.PathLike],
                            ours: Callable[[Path], bool]) -> Path:
    """The same promise for an output that is one file: never the source or inside it, replaced only with
    ``overwrite`` and only when ``ours(path)`` says trimtune wrote it (a marker in the file's metadata)."""
    path = Path(path)
    for source in sources:
        if _within(path, Path(source)):
            raise OutputError(f"--out {path} is, or is inside, {source}, which this command reads; choose another --out")
    if not path.exists():
        return path
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give --out a file name")
    if not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it, or choose another --out")
    if not ours(path):
        raise OutputError(f"{path} exists and was not written by trimtune export; refusing to replace it (choose another --out)")
    return path


def partial_path(path: str | os.PathLike) -> Path:
    """Where ``path``'s next version is built (deterministic, so a resumed run finds it)."""
    path = Path(path)
    return path.parent / f".{path.name}.partial"


def fresh_partial(path: Path, marker: str, record: dict) -> Path:
    """An empty build directory for ``path``, holding only the marker; a stale one of ours is cleared."""
    partial = partial_path(path)
    if partial.exists():
        if not written_by_trimtune(partial):
            raise OutputError(f"{partial} exists and was not written by trimtune; remove it or choose another --out")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    write_json(partial / marker, record)
    return partial


def swap_in(new: Path, path: Path) -> None:
    """Put the complete directory ``new`` at ``path``; the previous one goes only after that, and only
    if trimtune wrote it (checked again here: a resumed run's ``--out`` may have appeared meanwhile)."""
    old = None
    if path.exists() and not (path.is_dir() and not any(path.iterdir())) and not written_by_trimtune(path):
        raise OutputError(f"{path} exists and was not written by trimtune; the finished output is kept in {new} "
                          "(move it where you want it)")
    if path.exists():
        old = path.parent / f".{path.name}.replaced-{os.getpid()}"
        os.replace(path, old)
    os.replace(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def output_directory(path: str | os.PathLike, overwrite: bool, what: str, sources: Iterable = ()) -> Iterator[Path]:
    """Yield an empty build directory; when the block succeeds it replaces ``path``."""
    path = check_replaceable(path, overwrite, sources)
    partial = fresh_partial(path, OUTPUT_MARKER, {"format": "trimtune.output/1", "written_by": what})
    try:
        yield partial
        swap_in(partial, path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _within(inner: Path, outer: Path) -> bool:
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents
