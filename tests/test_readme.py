"""README.md stays true: exactly two set-up commands, CI runs the second verbatim, the example runs."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_two_single_line_setup_commands_and_ci_runs_the_test_one():
    demo_cmd, test_cmd = [block.strip() for block in code_blocks("bash")]
    assert "\n" not in demo_cmd and "\n" not in test_cmd
    for cmd in (demo_cmd, test_cmd):
        assert cmd.startswith("python3 -m venv ") and "pip install torch==2.13.0 &&" in cmd
    assert demo_cmd.endswith("trimtune demo")
    assert "pytest" in test_cmd and '".[test]"' in test_cmd
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci_lines
    assert "set -euo pipefail" in ci_lines


def test_python_example_runs(minilm_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example saves its adapter to ./out/
    (example,) = code_blocks("python")  # the one runnable example; fragments that need files are ```py
    assert len(example.strip().splitlines()) <= 12
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert type(namespace["plain"]).__name__ == "BertForSequenceClassification"
    assert not any("lora" in name for name, _ in namespace["plain"].named_parameters())
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
