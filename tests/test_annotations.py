"""Every public function and method of the package is annotated (its parameters and its
return), so mypy checks every body (docs/contributing.md)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tf_segunravel"


def unannotated(source: str) -> list[str]:
    """'name' for each public function of `source` (methods as 'Class.name') that lacks an
    annotation on a parameter (bar self and cls) or on its return (bar __init__)."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = child.name
                if name.startswith("_") and name not in ("__init__", "__call__"):
                    continue
                a = child.args
                params = [
                    *a.posonlyargs,
                    *a.args,
                    *a.kwonlyargs,
                    *filter(None, [a.vararg, a.kwarg]),
                ]
                bare = [p for p in params if p.annotation is None and p.arg not in ("self", "cls")]
                if bare or (child.returns is None and name != "__init__"):
                    found.append(prefix + name)

    visit(ast.parse(source), "")
    return found


def test_the_check_sees_a_missing_annotation():
    source = "def f(x: int) -> int: ...\ndef g(x): ...\nclass A:\n    def m(self) -> None: ...\n"
    source += "    def n(self, y: int): ...\ndef _private(x): ...\n"
    assert unannotated(source) == ["g", "A.n"]


def test_every_public_function_is_annotated():
    missing = {
        str(path.relative_to(PACKAGE.parent)): names
        for path in sorted(PACKAGE.rglob("*.py"))
        if (names := unannotated(path.read_text()))
    }
    assert not missing, missing
