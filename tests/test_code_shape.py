"""The shape of the code that the design review asked for, kept true by a test (issue 19):
no function in ``lookalike/`` longer than 80 lines, imports between our modules absolute, and
every ``type: ignore`` with its reason."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lookalike"
MAX_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_longer_than_80_lines():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)


def test_imports_between_our_modules_are_absolute():
    """A relative import resolves from where a module sits; after a move it silently means
    another module (the relayout found one). ``from lookalike.x import y`` says what it means."""
    relative = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                for path in _modules() for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.ImportFrom) and node.level]
    assert not relative, relative


def test_every_type_ignore_says_why():
    bare = [f"{path.relative_to(PACKAGE.parent)}:{n}" for path in _modules()
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if "type: ignore" in line and not re.search(r"type: ignore\[[\w,-]+\]\s+(#|\()", line)]
    assert not bare, "give each its error code and reason:\n" + "\n".join(bare)
