"""The layout holds: layers only look down (import-linter's contracts in pyproject.toml), no import
cycles, imports at module level below the application layer, and no code outside a method's own
package asks whether a config is that method's."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC.parent
APP = ("cli", "__main__", "commands")  # handlers import their heavy modules when run: `trimtune --help` stays fast


def lint_imports(root: Path, src: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())", "--no-cache"],
        cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    )


def test_import_linter_contracts_are_kept():
    result = lint_imports(ROOT, SRC)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_the_app_importing_below_the_facade_breaks_the_contract(tmp_path):
    """A copy of the package whose CLI helper reaches into core directly: import-linter must refuse it."""
    shutil.copytree(SRC / "trimtune", tmp_path / "src" / "trimtune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    common = tmp_path / "src" / "trimtune" / "commands" / "common.py"
    common.write_text(common.read_text() + "\nfrom ..core.config import ConfigError  # noqa: E402,F401\n")
    result = lint_imports(tmp_path, tmp_path / "src")
    assert result.returncode != 0
    assert "the app reaches the library only through the facade" in result.stdout
    assert "trimtune.commands.common -> trimtune.core.config" in result.stdout


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other (directly or around a loop)."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(group)

    sys.setrecursionlimit(10_000)
    for node in list(graph):
        if node not in index:
            visit(node)
    return [g for g in groups if len(g) > 1]


def test_no_import_cycles():
    sys.path.insert(0, str(SRC))
    graph = grimp.build_graph("trimtune", cache_dir=None)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert strongly_connected(edges) == []
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}}) != []  # the check can fail


def deferred_internal_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.level > 0 or (inner.module or "").startswith("trimtune")):
                    found.append(inner.lineno)
                elif isinstance(inner, ast.Import) and any(a.name.startswith("trimtune") for a in inner.names):
                    found.append(inner.lineno)
    return found


def test_imports_are_at_module_level_below_the_application():
    package = SRC / "trimtune"
    offenders = {
        str(p.relative_to(package)): lines
        for p in package.rglob("*.py")
        if p.relative_to(package).parts[0].removesuffix(".py") not in APP and (lines := deferred_internal_imports(p))
    }
    assert offenders == {}


def test_no_method_config_type_checks_outside_the_method_package():
    package = SRC / "trimtune"
    configs = {}  # config class name -> its method folder
    for folder in (package / "methods").iterdir():
        for file in folder.glob("*.py"):
            for name in re.findall(r"^class (\w+Config)\b", file.read_text(), re.M):
                configs[name] = folder
    assert {"LoraConfig", "AdaLoraConfig", "DiffConfig", "PrefixTuningConfig"} <= set(configs)
    pattern = re.compile(rf"isinstance\([^)]*\b({'|'.join(configs)})\b")
    offenders = [
        f"{p.relative_to(package)}: {m.group(0)}"
        for p in package.rglob("*.py")
        for m in pattern.finditer(p.read_text())
        if configs[m.group(1)] not in p.parents
    ]
    assert offenders == []
