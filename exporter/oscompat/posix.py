"""POSIX (Linux, macOS): the behaviour the exporter always had, moved here unchanged."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from .base import Exposure, Platform, Triggers


class PosixPlatform(Platform):
    name = "posix"

    def default_config_path(self) -> str:
        return "config/m365-mail-exporter.yml"

    def protect_file(self, path: Path, fd: int | None, mode: int) -> None:
        if fd is not None:
            os.fchmod(fd, mode)
        else:
            os.chmod(path, mode)

    def make_private_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def exposure(self, path: Path) -> Exposure | None:
        try:
            st = path.stat()
        except OSError:
            return None
        bits = st.st_mode & 0o077
        if not bits:
            return None
        if stat.S_ISDIR(st.st_mode):
            return Exposure(f"group/others (directory, mode {stat.S_IMODE(st.st_mode):o})", "chmod 700 it")
        return Exposure(f"group/others (mode {stat.S_IMODE(st.st_mode):o})", "chmod 600 it")

    def fsync_dir(self, path: Path) -> None:
        dir_fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def descriptor_limit(self) -> int | None:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return None if soft == resource.RLIM_INFINITY else int(soft)

    def raise_descriptor_limit(self) -> int | None:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (ValueError, OSError):
                pass  # a container may forbid it: keep the soft limit
        return self.descriptor_limit()

    def enable_ansi(self, stream: TextIO) -> bool:
        return True  # every POSIX terminal speaks ANSI; whether to colour at all is decided by the caller

    def install_triggers(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None],
                         reload: Callable[[], Awaitable[object]], config_path: str | Path | None) -> Triggers:
        t = Triggers(loop, stop, reload)
        # Kept until the loop closes (asyncio removes them then), as always: a second SIGTERM or Ctrl+C
        # while shutting down is absorbed, and a SIGHUP then is ignored (closed triggers refuse reloads).
        for sig, fn in ((signal.SIGTERM, t.request_stop), (signal.SIGINT, t.request_stop),
                        (signal.SIGHUP, t.request_reload)):
            loop.add_signal_handler(sig, fn)
        return t
