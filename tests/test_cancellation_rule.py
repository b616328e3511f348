"""Cancellation is never swallowed in exporter/ (a source-level rule, checked on the syntax tree).

Why: a handler that turns `asyncio.CancelledError` into something else (or drops it) keeps a
cancelled task running: that is how a reload storm left 40 copies of one probe job (issue 9).
Forbidden: bare `except:`; `except BaseException` and any `except` naming CancelledError
that does not re-raise; `contextlib.suppress(...CancelledError...)` (use
`exporter.tasks.cancel_and_wait`). The only exception is a handler at the very top of a task
it owns, marked on its line with `# cancel-ok: <why>`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "exporter"
MARKER = "# cancel-ok:"


def _names(node: ast.expr | None) -> set[str]:
    if node is None:
        return set()
    items = node.elts if isinstance(node, ast.Tuple) else [node]
    out = set()
    for item in items:
        if isinstance(item, ast.Attribute):
            out.add(item.attr)
        elif isinstance(item, ast.Name):
            out.add(item.id)
    return out


def _reraises(handler: ast.ExceptHandler) -> bool:
    todo: list[ast.AST] = list(handler.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if isinstance(node, ast.Raise) and (
                node.exc is None or (isinstance(node.exc, ast.Name) and node.exc.id == handler.name)):
            return True
        todo.extend(ast.iter_child_nodes(node))
    return False


def violations(source: str, filename: str) -> list[str]:
    lines = source.splitlines()
    out: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        marked = MARKER in lines[node.lineno - 1] if hasattr(node, "lineno") else False
        if isinstance(node, ast.ExceptHandler):
            if node.type is None:
                out.append(f"{where}: bare except:")
            elif _names(node.type) & {"BaseException", "CancelledError"} and not _reraises(node) and not marked:
                out.append(f"{where}: except {ast.unparse(node.type)} without re-raise")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
            fname = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if fname == "suppress" and any("CancelledError" in _names(a) for a in node.args) and not marked:
                out.append(f"{where}: suppress(CancelledError): use exporter.tasks.cancel_and_wait")
    return out


def test_no_swallowed_cancellation_in_exporter() -> None:
    found: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        found += violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT.parent)))
    assert not found, "cancellation swallowed:\n" + "\n".join(found)


def test_rule_catches_each_form() -> None:
    bad = {
        "try:\n    pass\nexcept:\n    pass\n": "bare except",
        "try:\n    pass\nexcept BaseException as exc:\n    err = exc\n": "BaseException",
        "try:\n    pass\nexcept BaseException as exc:\n    raise TokenError() from exc\n": "BaseException",
        "try:\n    pass\nexcept asyncio.CancelledError:\n    log()\n": "CancelledError",
        "try:\n    pass\nexcept (OSError, asyncio.CancelledError):\n    pass\n": "CancelledError",
        "with contextlib.suppress(asyncio.CancelledError):\n    pass\n": "suppress",
    }
    for src, what in bad.items():
        assert violations(src, "x.py"), what
    good = [
        "try:\n    pass\nexcept BaseException:\n    cleanup()\n    raise\n",
        "try:\n    pass\nexcept asyncio.CancelledError as exc:\n    raise exc\n",
        "try:\n    pass\nexcept asyncio.CancelledError:  # cancel-ok: task top\n    pass\n",
        "try:\n    pass\nexcept Exception:\n    pass\n",
    ]
    for src in good:
        assert not violations(src, "x.py"), src
