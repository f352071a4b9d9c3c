"""The shape the code keeps: small functions, and backends that never import the HTTP layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

PACKAGE = Path(__file__).resolve().parents[1] / "serve_app"
MAX_FUNCTION_LINES = 40


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_over_40_lines():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("folder", ["backends", "core", "audio", "gpu", "batch", "serving"])
def test_only_the_api_imports_fastapi(folder):
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0] if node.level == 0 else "")
                if node.module.startswith("serve_app.api"):
                    imported.add("serve_app.api")
        assert not imported & {"fastapi", "starlette", "serve_app.api"}, f"{path} imports the HTTP layer"
