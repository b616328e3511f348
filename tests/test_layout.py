"""The package's two halves stay apart: the daemon's core (exporter/*.py, probes/, auth/, ...)
never imports the operator's commands (exporter/commands/: check, checklist, login), which use
the core; only the command line (cli.py) registers them. Read from the source with `ast`, so a
new import anywhere in the core that reaches into commands/ fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "exporter"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the exporter modules `path` imports (relative imports resolved)."""
    package = ".".join(("exporter", *path.relative_to(PKG).parent.parts))
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_core_never_imports_the_commands() -> None:
    core = [p for p in PKG.rglob("*.py") if "commands" not in p.relative_to(PKG).parts and p.name != "cli.py"]
    assert len(core) > 50
    offenders = {str(p.relative_to(PKG)): sorted(m for m in imported_modules(p) if m.startswith("exporter.commands"))
                 for p in core}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert any(m.startswith("exporter.commands") for m in imported_modules(PKG / "cli.py"))  # the one way in
    assert "exporter.runtime" in imported_modules(PKG / "commands" / "checklist.py")  # the scan resolves ..runtime
