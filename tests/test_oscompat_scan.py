"""No POSIX-only call outside exporter/oscompat/: what Windows CPython lacks must not creep back in.

An AST scan (not grep: a comment or docstring mentioning SIGHUP is fine) of every module in
exporter/, and a self-test that the scanner does catch each forbidden form."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_DIR = ROOT / "exporter" / "oscompat"

POSIX_ONLY_MODULES = {"fcntl", "pwd", "grp", "termios", "tty", "pty", "resource", "posix", "syslog",
                      "asyncio.unix_events"}
POSIX_ONLY_ATTRS = {
    "os": {"fchmod", "lchmod", "chmod", "getuid", "geteuid", "getgid", "getegid", "chown", "fchown", "lchown",
           "O_DIRECTORY", "O_NOFOLLOW", "killpg", "getpgid", "setsid", "fork", "sync", "statvfs", "mkfifo",
           "uname"},
    "signal": {"SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGKILL", "SIGCHLD", "SIGPIPE", "alarm",
               "pause", "setitimer", "siginterrupt", "pthread_kill"},
}
POSIX_ONLY_METHODS = {"add_signal_handler", "remove_signal_handler", "chmod", "lchmod", "owner"}  # Path.owner: pwd
STAT_OWNERSHIP = {"st_uid", "st_gid"}


def violations(source: str, name: str = "<src>") -> list[str]:
    out: list[str] = []
    tree = ast.parse(source, name)
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [f"{where}: import {a.name}" for a in node.names if a.name in POSIX_ONLY_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in POSIX_ONLY_MODULES:
                out.append(f"{where}: from {node.module} import")
            for a in node.names:
                if a.name in POSIX_ONLY_ATTRS.get(node.module, ()):
                    out.append(f"{where}: from {node.module} import {a.name}")
        elif isinstance(node, ast.Attribute):
            base = node.value.id if isinstance(node.value, ast.Name) else None
            if base in POSIX_ONLY_ATTRS and node.attr in POSIX_ONLY_ATTRS[base]:
                out.append(f"{where}: {base}.{node.attr}")
            elif node.attr in STAT_OWNERSHIP:
                out.append(f"{where}: .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr in POSIX_ONLY_METHODS and not (isinstance(f.value, ast.Name) and f.value.id == "os"):
                out.append(f"{where}: .{f.attr}()")
            # os.open(dir, os.O_RDONLY) is the directory-fsync idiom, which Windows refuses
            if (isinstance(f.value, ast.Name) and f.value.id == "os" and f.attr == "open" and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Attribute) and node.args[1].attr == "O_RDONLY"):
                out.append(f"{where}: os.open(..., os.O_RDONLY) (directory fsync?)")
    return out


def test_no_posix_only_call_outside_the_platform_module() -> None:
    found: list[str] = []
    for path in sorted((ROOT / "exporter").rglob("*.py")):
        if ALLOWED_DIR in path.parents:
            continue
        found += violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == [], "POSIX-only calls belong in exporter/oscompat/:\n" + "\n".join(found)


def test_the_scanner_catches_each_form() -> None:
    bad = {
        "import fcntl": 1, "import pwd, grp": 2, "from fcntl import flock": 1, "from os import fchmod": 1,
        "os.fchmod(fd, 0o600)": 1, "os.chmod(p, 0o600)": 1, "os.getuid()": 1, "signal.SIGHUP": 1,
        "loop.add_signal_handler(signal.SIGTERM, f)": 1, "Path(p).chmod(0o600)": 1, "p.stat().st_uid": 1,
        "fd = os.open(d, os.O_RDONLY)": 1, "os.open(d, os.O_DIRECTORY)": 1, "import asyncio.unix_events": 1,
        "Path(p).owner()": 1,
    }
    for src, n in bad.items():
        assert len(violations(src)) == n, src
    fine = ["os.replace(a, b)", "os.fsync(fh.fileno())", "signal.SIGINT", "signal.SIGTERM",
            "os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)", "'SIGHUP reloads'", "import os, signal", "m.group(1)"]
    for src in fine:
        assert violations(src) == [], src
