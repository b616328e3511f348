"""Listening socket for the web port: TLS per connection, connection cap, header timeout, fd reserve.

Why not aiohttp's TCPSite: aiohttp has no connection limit and no timeout for the first
request's header, so 20,000 idle sockets or a slowloris client exhausted the process's file
descriptors and the probes failed with EMFILE (the exporter became the outage). This site
wraps aiohttp's protocol factory:

- Every accepted connection counts against `max_connections` (default 1024, and never more than
  RLIMIT_NOFILE minus a reserve kept for probes, token requests and files). At the cap, the
  oldest idle connection (no request in progress: still sending its first header, or an idle
  keep-alive) is closed to make room, so a flood of idle sockets cannot
  lock Prometheus out; if none is idle, the newcomer is closed.
- The TLS handshake and the first request's header, and on a keep-alive connection every later
  request's header from its first byte, must complete within `header_timeout` (slowloris);
  idle keep-alive connections are closed after `idle_timeout` by aiohttp.
- TLS is started per connection with the web config's *current* SSLContext
  (`loop.start_tls`), so a rotated certificate, CA or client-auth policy applies to the next
  connection without a restart, and `client_allowed_sans` is checked after the handshake.

`raise_nofile_limit` raises the soft RLIMIT_NOFILE to the hard limit at start (as Go's runtime
does), so the reserve is large in practice.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from . import oscompat
from .webconfig import WebConfigWatcher

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 60.0
FD_RESERVE_MIN = 256  # descriptors always left for probes, token requests, files and logs


def raise_nofile_limit() -> int:
    """Raise the soft descriptor limit to the hard limit; returns the soft limit now in force (0: none)."""
    return oscompat.raise_descriptor_limit() or 0


def fd_budget(max_connections: int) -> int:
    """The connection cap after keeping a reserve of descriptors (a quarter, at least 256)."""
    soft = oscompat.descriptor_limit()
    if soft is None:
        return max_connections
    reserve = max(FD_RESERVE_MIN, soft // 4)
    return max(1, min(max_connections, soft - reserve))


class ConnectionGuard:
    """Counts open web connections, evicts the longest-idle one at the cap, times out headers."""

    def __init__(self, watcher: WebConfigWatcher, max_connections: int, header_timeout: float) -> None:
        self.watcher = watcher
        self.limit = fd_budget(max_connections)
        self.header_timeout = header_timeout
        self.open: dict[GuardedProtocol, None] = {}  # insertion order = admission order
        self.accepted = 0
        self.evicted = 0
        self.refused = 0
        self.header_timeouts = 0
        self.tls_failures = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # (open connections, limit) -> e.g. store facts; called at most once a second, on change
        self.report: Callable[[int, int], None] | None = None

    async def report_loop(self) -> None:
        last: tuple[int, int] | None = None
        while True:
            now = (len(self.open), self.limit)
            if now != last and self.report is not None:
                self.report(*now)
                last = now
            await asyncio.sleep(1.0)

    def admit(self, conn: GuardedProtocol) -> bool:
        self.accepted += 1
        if len(self.open) >= self.limit:
            victim = self._longest_idle()
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            victim.abort()
        self.open[conn] = None
        return True

    def _longest_idle(self) -> GuardedProtocol | None:
        """The earliest-admitted idle connection. Stops at the first idle one (usually the first
        entry under a flood), so admitting at the cap stays O(1) rather than a scan per accept,
        which would stall the event loop the probes run on."""
        for conn in self.open:  # admission order; bounded by the cap
            if conn.idle():
                return conn
        return None

    def release(self, conn: GuardedProtocol) -> None:
        self.open.pop(conn, None)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.open):
            conn.abort()


class GuardedProtocol(asyncio.Protocol):
    """Sits between the socket (or TLS) transport and aiohttp's RequestHandler."""

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self.factory = factory
        self.inner: asyncio.Protocol | None = None
        self.raw: asyncio.Transport | None = None
        self.in_header = True
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._early: list[bytes] = []  # decrypted bytes delivered before the handler exists
        self.last_activity = time.monotonic()

    # ---------------------------------------------------------------- life cycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # no isinstance check: uvloop's TCPTransport is not an asyncio.Transport subclass (the
        # assert made every connection fail under uvloop, i.e. always on Linux)
        transport = cast(asyncio.Transport, transport)
        self.raw = transport
        if not self.guard.admit(self):
            transport.abort()
            self._closed = True
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.guard.header_timeout, self._header_timeout)
        cfg = self.guard.watcher.current()
        if cfg.ssl_context is None:
            self._start_inner(transport)
            return
        transport.pause_reading()  # start_tls takes over reading; no ClientHello byte may reach us first
        self.guard.spawn(self._start_tls(transport, cfg.ssl_context, cfg.tls))

    async def _start_tls(self, transport: asyncio.Transport, ctx: ssl.SSLContext, tls: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls_transport = await loop.start_tls(transport, self, ctx, server_side=True,
                                                 ssl_handshake_timeout=self.guard.header_timeout)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError, RuntimeError) as exc:
            self.guard.tls_failures += 1
            log.debug("web TLS handshake failed: %s", type(exc).__name__)
            self.abort()
            return
        if tls_transport is None or self._closed:
            self.abort()
            return
        if tls is not None and not tls.peer_allowed(tls_transport.get_extra_info("peercert")):
            log.debug("web client certificate has none of client_allowed_sans: closing")
            self.guard.tls_failures += 1
            tls_transport.abort()
            self.abort()
            return
        self._start_inner(tls_transport)

    def _start_inner(self, transport: asyncio.Transport) -> None:
        self.inner = self.factory()
        self.inner.connection_made(transport)
        early, self._early = self._early, []
        for chunk in early:
            self.inner.data_received(chunk)

    def _header_timeout(self) -> None:
        if self.in_header and not self._closed:
            self.guard.header_timeouts += 1
            log.debug("web client sent no complete request header within %.0fs: closing", self.guard.header_timeout)
            self.abort()

    def idle(self) -> bool:
        if self.in_header:
            return True
        return not getattr(self.inner, "_request_in_progress", False) and time.monotonic() - self.last_activity > 1.0

    def abort(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.guard.release(self)
        if self.raw is not None and not self._closed:
            self._closed = True
            self.raw.abort()

    # ---------------------------------------------------------------- data path

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if not self.in_header and self.inner is not None and not getattr(self.inner, "_request_in_progress", True):
            # bytes after a finished request start the next request's header: same deadline as the first
            self.in_header, self._tail = True, b""
            self._timer = asyncio.get_running_loop().call_later(self.guard.header_timeout, self._header_timeout)
        if self.in_header:
            buf = self._tail + data
            if b"\r\n\r\n" in buf:
                self.in_header = False
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            else:
                self._tail = buf[-3:]
        if self.inner is not None:
            self.inner.data_received(data)
        elif len(self._early) < 64:  # TLS may hand over the first request before start_tls returns
            self._early.append(data)
        else:
            self.abort()

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed = True
        self.guard.release(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through `ConnectionGuard` (see the module docstring)."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, guard: ConnectionGuard,
                 backlog: int = 1024) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self.guard = host, port, guard
        self.bound_port = port

    @property
    def name(self) -> str:
        scheme = "https" if self.guard.watcher.current().tls else "http"
        return f"{scheme}://{self._host or '0.0.0.0'}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        factory: Callable[[], asyncio.Protocol] = server  # type: ignore[assignment]
        self._server = await loop.create_server(lambda: GuardedProtocol(self.guard, factory), self._host,
                                                self._port, backlog=self._backlog, reuse_address=True)
        if self._server.sockets:
            self.bound_port = self._server.sockets[0].getsockname()[1]
        self.guard.spawn(self.guard.report_loop())

    async def stop(self) -> None:
        self.guard.close_all()
        await super().stop()
