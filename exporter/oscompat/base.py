"""What every platform implements, plus the parts they share (reload tasks, bounded replace retry)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

log = logging.getLogger("exporter.oscompat")

# Windows: ERROR_ACCESS_DENIED, ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION. A reader that opened
# the cache without FILE_SHARE_DELETE (every Python open()) blocks a rename onto it until it closes.
SHARING_WINERRORS = frozenset({5, 32, 33})
REPLACE_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.5)  # about 1.7 s in all, then give up


@dataclass(frozen=True)
class Exposure:
    """Who can access a private file besides its owner, and the command that fixes it."""

    who: str
    fix: str

    def message(self, path: Path) -> str:
        return f"{path} is accessible by {self.who}: {self.fix}"


class Triggers:
    """The stop and reload triggers of one `serve` run; `close()` removes them all.

    Reloads run as tasks owned here (never fire-and-forget: a task nobody holds can be garbage
    collected mid-run), one after another through the runtime's own reload lock."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None],
                 reload: Callable[[], Awaitable[object]]) -> None:
        self.loop, self._stop, self._reload = loop, stop, reload
        self._undo: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[object]] = set()  # reloads in flight: awaited (bounded) on close
        self._helpers: set[asyncio.Task[object]] = set()  # watches: cancelled on close
        self.reloads = 0
        self.closed = False

    def on_close(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def request_stop(self) -> None:
        self._stop()

    def request_reload(self) -> None:
        if self.closed:
            log.info("reload request ignored: shutting down")
            return
        self.reloads += 1
        task: asyncio.Task[object] = self.loop.create_task(self._run_reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_reload(self) -> object:
        try:
            return await self._reload()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("config reload raised")
            return None

    def add_task(self, task: asyncio.Task[object]) -> None:
        """A background helper (the Windows config watch) that close() cancels."""
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop watching, let reloads in flight finish (bounded), refuse new ones, run the undo hooks."""
        self.closed = True
        while self._undo:
            self._undo.pop()()
        helpers = list(self._helpers)
        for h in helpers:
            h.cancel()
        if helpers:
            await asyncio.wait(helpers, timeout=timeout)
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout)


class Platform:
    """Base: behaviour both platforms share; subclasses fill in the rest."""

    name = "base"
    replace_delays: tuple[float, ...] = REPLACE_DELAYS

    def default_config_path(self) -> str:
        raise NotImplementedError

    def is_sharing_violation(self, exc: OSError) -> bool:
        return False

    def replace(self, src: str | Path, dst: str | Path) -> None:
        for delay in (*self.replace_delays, None):
            try:
                os.replace(src, dst)
                return
            except PermissionError as exc:
                if delay is None or not self.is_sharing_violation(exc):
                    raise
                log.debug("%s is in use by another process, retrying the replace in %.2fs", dst, delay)
                time.sleep(delay)

    def protect_file(self, path: Path, fd: int | None, mode: int) -> None:
        raise NotImplementedError

    def make_private_dir(self, path: Path) -> None:
        raise NotImplementedError

    def exposure(self, path: Path) -> Exposure | None:
        raise NotImplementedError

    def fsync_dir(self, path: Path) -> None:
        raise NotImplementedError

    def enable_ansi(self, stream: TextIO) -> bool:
        raise NotImplementedError

    def descriptor_limit(self) -> int | None:
        return None

    def raise_descriptor_limit(self) -> int | None:
        return None

    def install_triggers(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None],
                         reload: Callable[[], Awaitable[object]], config_path: str | Path | None) -> Triggers:
        raise NotImplementedError
