"""--overwrite replaces only what trimtune wrote, never what the command reads, and only once the new
output is complete; a failed run leaves the previous output intact and blocks no rerun. Each case runs
the CLI in a subprocess on real directories; a full disk is simulated by making the write raise ENOSPC.
Starting a process (importing torch and trimtune) costs far more than a digits run, so one subprocess
runs several commands in a row; a command that follows a failed one always runs in a new process, as
a user's rerun would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SRC = str(Path(__file__).resolve().parents[1] / "src")
DIGITS = [str(EXAMPLES / "prune_digits.yaml"), "--set", "train.epochs=1", "--quiet"]
END = "=== trimtune exited with"
# argv[1]: JSON list of [disk_full_at or null, [trimtune arguments]]; each command's stderr ends with END and its code.
SESSION = f"""
import errno, json, sys
import trimtune.core.io.atomic as atomic
real, full_at = atomic._fsync_file, [None]
def full(path):  # the disk fills up while the named file is written
    if full_at[0] is not None and full_at[0] in str(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return real(path)
atomic._fsync_file = full
from trimtune.cli import main
for full_at[0], argv in json.loads(sys.argv[1]):
    try:
        code = main(argv)
    except SystemExit as exit:  # usage errors, as `python -m trimtune` exits with them
        code = exit.code
    sys.stdout.flush()
    print("{END}", code, file=sys.stderr, flush=True)
"""
pytestmark = pytest.mark.slow


@dataclass
class Result:
    returncode: int
    stderr: str


def trimtune(*commands: list, disk_full_at: str | None = None) -> list[Result]:
    """Run each command (a list of `trimtune` arguments, or ``(disk_full_at, arguments)``) in order in
    one new process; a ``disk_full_at`` file name makes writing that file fail with ENOSPC."""
    calls = [c if isinstance(c, tuple) else (disk_full_at, c) for c in commands]
    calls = [(full_at, [str(a) for a in argv]) for full_at, argv in calls]
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run([sys.executable, "-c", SESSION, json.dumps(calls)], capture_output=True, text=True, env=env,
                              timeout=300)
    parts = finished.stderr.split(END)
    assert finished.returncode == 0 and len(parts) == len(calls) + 1, finished.stderr[-3000:]
    codes = [int(part.split("\n", 1)[0]) for part in parts[1:]]
    errors = [parts[0], *(part.split("\n", 1)[1] for part in parts[1:-1])]
    return [Result(code, err) for code, err in zip(codes, errors)]


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.txt").write_text("not trimtune's")
    return path


def test_a_run_that_fails_keeps_the_previous_one_and_blocks_no_rerun(tmp_path):
    run, fresh = tmp_path / "a" / "digits", tmp_path / "b" / "fresh"
    (first,) = trimtune(["prune", *DIGITS, "--out", run])
    assert first.returncode == 0, first.stderr
    before = snapshot(run)
    (failed,) = trimtune(["prune", *DIGITS, "--out", run, "--overwrite"], disk_full_at="pruned.safetensors")
    assert failed.returncode == 1 and "No space left on device" in failed.stderr
    assert snapshot(run) == before  # the previous run, byte for byte
    again, fresh_failed = trimtune(["prune", *DIGITS, "--out", run, "--overwrite"],
                                   ("pruned.safetensors", ["prune", *DIGITS, "--out", fresh]))
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in run.parent.iterdir()) == ["digits"]  # no build or replaced copies left

    assert fresh_failed.returncode == 1 and not fresh.exists()  # nothing half-written at --out...
    assert "--resume" in fresh_failed.stderr  # ...the trained steps are kept in checkpoints, and the message says so
    refused, rerun = trimtune(["prune", *DIGITS, "--out", fresh], ["prune", *DIGITS, "--out", fresh, "--overwrite"])
    assert refused.returncode != 0 and "--resume" in refused.stderr  # starting over is explicit
    assert rerun.returncode == 0, rerun.stderr  # --overwrite discards the checkpoints and runs again


def test_overwrite_never_touches_a_user_folder_or_the_source_run(tmp_path):
    run = tmp_path / "runs" / "digits"
    assert trimtune(["prune", *DIGITS, "--out", run])[0].returncode == 0
    mine = user_folder(tmp_path / "mine")
    before = snapshot(run)
    cases = [
        (["merge", run, "--out", mine, "--overwrite"], "was not written by trimtune"),
        (["export", run, "--out", run, "--overwrite"], "which this command reads"),
        (["merge", run, "--out", tmp_path / "runs", "--overwrite"], "which this command reads"),  # contains the run
        (["shrink", run, "--ratio", "0.5", "--out", mine, "--overwrite"], "was not written by trimtune"),
        (["prune", *DIGITS, "--out", mine, "--overwrite"], "was not written by trimtune"),
    ]
    merged = tmp_path / "merged"
    theirs = tmp_path / "theirs.safetensors"
    theirs.write_bytes(b"someone else's weights")
    merges = [["merge", run, "--out", merged], ["merge", run, "--out", merged], ["merge", run, "--out", merged, "--overwrite"],
              ["export", run, "--out", theirs, "--format", "safetensors", "--overwrite"]]
    *refusals, first, exists, replaced, theirs_refused = trimtune(*(argv for argv, _ in cases), *merges)
    for (argv, reason), result in zip(cases, refusals):
        assert result.returncode == 1 and reason in result.stderr, (argv, result.stderr)
    assert (mine / "thesis.txt").read_text() == "not trimtune's" and sorted(os.listdir(mine)) == ["thesis.txt"]
    assert snapshot(run) == before

    assert first.returncode == 0
    assert exists.returncode == 1  # exists: needs --overwrite
    assert replaced.returncode == 0, replaced.stderr  # trimtune wrote it: replaced
    assert theirs_refused.returncode == 1 and "not written by trimtune export" in theirs_refused.stderr
    assert theirs.read_bytes() == b"someone else's weights"
