"""The package's import layers (pyproject.toml, [tool.importlinter]): the contract holds on
the tree, and breaks, naming the import, when an engine module imports an application or
two engine modules import each other. `lint-imports` runs in a separate process on a copy
of the package, as .ci/run runs it."""

import shutil
import sys

import pytest

from tests.helpers import REPO_ROOT, run_command

LINT = [
    sys.executable,
    "-c",
    "from importlinter.cli import lint_imports_command; lint_imports_command()",
]


@pytest.fixture
def tree(tmp_path):
    """A copy of the package and its contract, importable from `tmp_path`."""
    shutil.copytree(
        f"{REPO_ROOT}/tf_segunravel",
        tmp_path / "tf_segunravel",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(f"{REPO_ROOT}/pyproject.toml", tmp_path)
    return tmp_path


def lint(tree):
    return run_command(LINT, cwd=tree, timeout=120, env={"PYTHONPATH": str(tree)})


def append(path, line):
    with open(path, "a") as f:
        f.write(f"\n{line}\n")


def test_the_tree_keeps_the_contract(tree):
    proc = lint(tree)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_an_engine_module_importing_an_application_breaks_it(tree):
    append(tree / "tf_segunravel" / "unravel" / "maps.py", "from tf_segunravel import baselines")
    proc = lint(tree)
    assert proc.returncode == 1
    assert "Applications above the engine, the engine above the foundations BROKEN" in proc.stdout
    assert "tf_segunravel.unravel.maps -> tf_segunravel.baselines" in proc.stdout


def test_an_import_cycle_inside_the_engine_breaks_it(tree):
    append(
        tree / "tf_segunravel" / "unravel" / "graph.py", "from tf_segunravel.unravel import tracer"
    )
    proc = lint(tree)
    assert proc.returncode == 1
    assert "No import cycles between the modules of any package BROKEN" in proc.stdout
