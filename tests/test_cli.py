"""The `trimtune` command: help, usage errors (exit 2), failures (exit 1), and the demo end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trimtune import cli
from trimtune.demo import STEPS, DemoContext, Step, run_demo

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_trimtune(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m trimtune ARGS` on this checkout's code, offline, as a user would run it."""
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "trimtune", *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_help_exits_0_and_lists_demo():
    result = run_trimtune("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout and "Exit codes" in result.stdout


def test_unknown_subcommand_is_a_usage_error():
    result = run_trimtune("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr and "demo" in result.stderr


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_failure_is_one_line_and_exit_1(monkeypatch, capsys, tmp_path):
    def broken(*args, **kwargs):
        raise FileNotFoundError("model directory /nowhere does not exist")

    monkeypatch.setattr("trimtune.demo.run_demo", broken)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "trimtune demo: error: FileNotFoundError: model directory /nowhere does not exist"
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "demo", "--out", str(tmp_path)])


def test_steps_run_in_order_with_a_shared_context(tmp_path, capsys):
    def first(ctx: DemoContext):
        ctx.results["first"] = {"value": 1}
        ctx.detail("first detail")

    def second(ctx: DemoContext):
        ctx.results["second"] = {"saw_first": ctx.results["first"]["value"]}
        ctx.report("second result")

    ctx = run_demo(tmp_path, quiet=True, steps=[Step("first", "One", first), Step("second", "Two", second)])
    out = capsys.readouterr().out
    assert "[1/2] One" in out and "[2/2] Two" in out and "second result" in out
    assert "first detail" not in out  # quiet hides details, never results
    assert json.loads((tmp_path / "demo_results.json").read_text()) == ctx.results == {
        "first": {"value": 1}, "second": {"saw_first": 1}}


def test_every_step_has_a_unique_key():
    keys = [step.key for step in STEPS]
    assert keys and len(set(keys)) == len(keys)


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = run_trimtune("demo", "--quick", "--out", str(out), timeout=900)  # four model-training steps on a shared machine
    assert result.returncode == 0, result.stderr
    for phrase in ("trainable", "linear probe", "accuracy before", "accuracy after", "adapter saved in"):
        assert phrase in result.stdout
    figures = json.loads((out / "demo_results.json").read_text())["lora_text"]
    assert 0 < figures["trainable"] < 0.05 * figures["total"]
    for key in ("probe_accuracy", "accuracy_before", "accuracy_after"):
        assert 0.0 <= figures[key] <= 1.0
    adapter = Path(figures["adapter_dir"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
