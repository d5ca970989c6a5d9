"""The shape of the server's code: no function longer than a reader can hold at once.

Migrations are left out: each is a long, linear script that is written once and never changed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import scheduler_host

MAX_FUNCTION_LINES = 60
PACKAGE = Path(scheduler_host.__file__).parent
EXCLUDED = (PACKAGE / "adapters" / "migrations",)


def _sources() -> list[Path]:
    return sorted(
        path
        for path in PACKAGE.rglob("*.py")
        if not any(path.is_relative_to(excluded) for excluded in EXCLUDED)
    )


def _long_functions(path: Path, root: Path) -> list[str]:
    """`file:line name (N lines)`, the file relative to `root`, for each function of `path` longer
    than the limit; a function's lines run from its `def` to its last line, docstring included,
    decorators not."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                where = path.relative_to(root)
                found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_the_sources_are_found() -> None:
    names = {path.relative_to(PACKAGE).as_posix() for path in _sources()}
    assert "app.py" in names
    assert "service/dispatch/claim_loop.py" in names
    assert not any(name.startswith("adapters/migrations/") for name in names)


def test_no_function_is_longer_than_60_lines() -> None:
    too_long = [found for path in _sources() for found in _long_functions(path, PACKAGE.parent)]
    listing = "\n".join(too_long)
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n{listing}"


def test_the_count_runs_from_def_to_the_last_line(tmp_path: Path) -> None:
    body = "\n".join(f"    x{n} = {n}" for n in range(MAX_FUNCTION_LINES - 1))
    source = tmp_path / "shape.py"
    source.write_text(f"def fits():\n{body}\n\n\nasync def over():\n{body}\n    return x0\n")
    found = _long_functions(source, tmp_path)
    assert found == [f"shape.py:{MAX_FUNCTION_LINES + 3} over ({MAX_FUNCTION_LINES + 1} lines)"]
