"""Every OS-specific behaviour of the exporter, in one place: POSIX or Windows.

Why one module: Cisco ECE runs on Windows Server, and `check`, `login` and `serve` must run on
its application and services servers, while Linux stays exactly as it was. Everything that
differs lives behind the functions below (tests/test_oscompat_scan.py fails if a POSIX-only
call appears anywhere else in exporter/):

- stop and reload triggers for `serve` (SIGTERM/SIGINT/SIGHUP on POSIX; Ctrl+C, Ctrl+Break,
  console close/shutdown and a config-file watch on Windows, where POST /-/reload is the
  explicit trigger);
- atomic replace (Windows: retried while another process holds the target open);
- owner-only files and directories (POSIX modes; Windows: a protected DACL for the current
  user and SYSTEM) and the check that warns when one is exposed;
- durability (directory fsync exists on POSIX only);
- console colour (Windows: virtual-terminal mode) and the default config path.

The implementation is chosen once from `os.name`; tests switch it with `select()` (see
tests/winsim.py, which runs the suite as Windows CPython would see it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from .base import Exposure, Platform, Triggers
from .posix import PosixPlatform

__all__ = [
    "Exposure",
    "Platform",
    "Triggers",
    "current",
    "default_config_path",
    "descriptor_limit",
    "enable_ansi",
    "exposure",
    "fsync_dir",
    "install_triggers",
    "is_windows",
    "make_private_dir",
    "protect_file",
    "raise_descriptor_limit",
    "replace",
    "select",
]


def _default() -> Platform:
    if os.name == "nt":
        from .windows import WindowsPlatform

        return WindowsPlatform()
    return PosixPlatform()


_current: Platform = _default()


def current() -> Platform:
    return _current


def select(platform: Platform) -> Platform:
    """Use `platform` from now on (tests and the Windows simulation only); returns the previous one."""
    global _current
    previous, _current = _current, platform
    return previous


def is_windows() -> bool:
    return _current.name == "windows"


def default_config_path() -> str:
    return _current.default_config_path()


def replace(src: str | Path, dst: str | Path) -> None:
    """os.replace, retried (bounded) while Windows reports a sharing violation on the target."""
    _current.replace(src, dst)


def protect_file(path: str | Path, fd: int | None = None, mode: int = 0o600) -> None:
    """Make a file readable and writable by the current user only (POSIX `mode`, Windows ACL)."""
    _current.protect_file(Path(path), fd, mode)


def make_private_dir(path: str | Path) -> None:
    """Create `path` (and parents) if missing; a directory we create is owner-only."""
    _current.make_private_dir(Path(path))


def exposure(path: str | Path) -> Exposure | None:
    """Who besides the owner (and SYSTEM/Administrators on Windows) can access `path`, or None."""
    return _current.exposure(Path(path))


def fsync_dir(path: str | Path) -> None:
    """Make a rename in `path` durable (POSIX); Windows has no directory fsync (NTFS journals it)."""
    _current.fsync_dir(Path(path))


def descriptor_limit() -> int | None:
    """The soft limit on open file descriptors (POSIX RLIMIT_NOFILE), None where there is no such limit
    (Windows sockets are kernel handles, not C runtime descriptors). For sizing connection caps."""
    return _current.descriptor_limit()


def raise_descriptor_limit() -> int | None:
    """Raise the soft descriptor limit to the hard one (a web-port flood must not starve probes of
    descriptors); returns the soft limit now in force, None where there is no such limit."""
    return _current.raise_descriptor_limit()


def enable_ansi(stream: TextIO) -> bool:
    """True if ANSI escapes render on this terminal stream (switching the Windows console to VT mode)."""
    return _current.enable_ansi(stream)


def install_triggers(
    loop: asyncio.AbstractEventLoop,
    stop: Callable[[], None],
    reload: Callable[[], Awaitable[object]],
    config_path: str | Path | None = None,
) -> Triggers:
    """Wire this OS's stop and reload triggers to `stop` and `reload`; `await triggers.close()` undoes it."""
    return _current.install_triggers(loop, stop, reload, config_path)
