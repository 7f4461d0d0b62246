"""--overwrite replaces only what trimtune wrote, never what the command reads, and only once the new
output is complete; a failed run leaves the previous output intact and blocks no rerun. Each case runs
the CLI as a subprocess on real directories; a full disk is simulated by making the write raise ENOSPC."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SRC = str(Path(__file__).resolve().parents[1] / "src")
DIGITS = [str(EXAMPLES / "prune_digits.yaml"), "--set", "train.epochs=1", "--quiet"]
DISK_FULL = """
import errno, sys
import trimtune.core.io.atomic as atomic
real = atomic._fsync_file
def full(path):  # the disk fills up while the named file is written
    if sys.argv[1] in str(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return real(path)
atomic._fsync_file = full
from trimtune.cli import main
sys.exit(main(sys.argv[2:]))
"""
pytestmark = pytest.mark.slow


def trimtune(*args, disk_full_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    argv = [str(a) for a in args]
    command = [sys.executable, "-c", DISK_FULL, disk_full_at, *argv] if disk_full_at else [sys.executable, "-m", "trimtune", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.txt").write_text("not trimtune's")
    return path


def test_a_run_that_fails_keeps_the_previous_one_and_blocks_no_rerun(tmp_path):
    run = tmp_path / "digits"
    first = trimtune("prune", *DIGITS, "--out", run)
    assert first.returncode == 0, first.stderr
    before = snapshot(run)
    failed = trimtune("prune", *DIGITS, "--out", run, "--overwrite", disk_full_at="pruned.safetensors")
    assert failed.returncode == 1 and "No space left on device" in failed.stderr
    assert snapshot(run) == before  # the previous run, byte for byte
    again = trimtune("prune", *DIGITS, "--out", run, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]  # no build or replaced copies left

    fresh = tmp_path / "fresh"
    failed = trimtune("prune", *DIGITS, "--out", fresh, disk_full_at="pruned.safetensors")
    assert failed.returncode == 1 and not fresh.exists()  # nothing half-written at --out...
    assert "--resume" in failed.stderr  # ...the trained steps are kept in checkpoints, and the message says so
    refused = trimtune("prune", *DIGITS, "--out", fresh)
    assert refused.returncode != 0 and "--resume" in refused.stderr  # starting over is explicit
    rerun = trimtune("prune", *DIGITS, "--out", fresh, "--overwrite")
    assert rerun.returncode == 0, rerun.stderr  # --overwrite discards the checkpoints and runs again


def test_overwrite_never_touches_a_user_folder_or_the_source_run(tmp_path):
    run = tmp_path / "runs" / "digits"
    assert trimtune("prune", *DIGITS, "--out", run).returncode == 0
    mine = user_folder(tmp_path / "mine")
    before = snapshot(run)
    cases = [
        (["merge", run, "--out", mine, "--overwrite"], "was not written by trimtune"),
        (["export", run, "--out", run, "--overwrite"], "which this command reads"),
        (["merge", run, "--out", tmp_path / "runs", "--overwrite"], "which this command reads"),  # contains the run
        (["shrink", run, "--ratio", "0.5", "--out", mine, "--overwrite"], "was not written by trimtune"),
        (["prune", *DIGITS, "--out", mine, "--overwrite"], "was not written by trimtune"),
    ]
    for argv, reason in cases:
        result = trimtune(*argv)
        assert result.returncode == 1 and reason in result.stderr, (argv, result.stderr)
    assert (mine / "thesis.txt").read_text() == "not trimtune's" and sorted(os.listdir(mine)) == ["thesis.txt"]
    assert snapshot(run) == before

    merged = tmp_path / "merged"
    assert trimtune("merge", run, "--out", merged).returncode == 0
    assert trimtune("merge", run, "--out", merged).returncode == 1  # exists: needs --overwrite
    replaced = trimtune("merge", run, "--out", merged, "--overwrite")  # trimtune wrote it: replaced
    assert replaced.returncode == 0, replaced.stderr
    theirs = tmp_path / "theirs.safetensors"
    theirs.write_bytes(b"someone else's weights")
    result = trimtune("export", run, "--out", theirs, "--format", "safetensors", "--overwrite")
    assert result.returncode == 1 and "not written by trimtune export" in result.stderr
    assert theirs.read_bytes() == b"someone else's weights"
