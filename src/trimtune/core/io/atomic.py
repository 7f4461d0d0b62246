"""Atomic writes: a reader sees the old file or the new one, never a half-written one.

Each file is written to a temporary sibling (same directory, so same filesystem), flushed to disk
with fsync and then moved over the target with ``os.replace``, which is atomic on POSIX and
Windows. A failure anywhere before the replace removes the temporary file and leaves the previous
version untouched.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; it replaces ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it becomes ``path``.

    A new directory appears whole (one rename). Into an existing directory each file is moved
    with ``os.replace`` (files of the directory that were not rewritten are kept), so every
    file is either its old or its new version.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for child in tmp.iterdir():
            _fsync_file(child)
        if not path.exists():
            os.replace(tmp, path)
        else:
            if not path.is_dir():
                raise NotADirectoryError(f"{path} exists and is not a directory")
            for child in sorted(tmp.iterdir()):
                os.replace(child, path / child.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path)
    _fsync_dir(path.parent)


def _remove_orphans(path: Path) -> None:
    """Build directories of ``path`` left by a killed process (``kill -9`` runs no cleanup): each names
    its writer's pid, so only those whose process is gone are removed, never a live writer's."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.pid*.tmp"):
        pid = leftover.name[len(path.name) + 5:].split(".", 1)[0]
        if leftover.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    # safetensors refuses views that share storage and non-contiguous tensors: give it private copies.
    own = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(own, str(tmp), metadata=metadata)
        except SafetensorError as err:  # safetensors wraps the OS error (e.g. a full disk) in its own type
            raise _as_os_error(err, path) from None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (not possible on Windows, where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _as_os_error(err: SafetensorError, path) -> OSError:
    """An ``OSError`` naming ``path``, with ENOSPC when the disk is full, as every other write failure is."""
    if "No space left on device" in str(err) or "os error 28" in str(err):
        return OSError(errno.ENOSPC, "No space left on device", str(path))
    return OSError(f"could not write {path}: {err}")
