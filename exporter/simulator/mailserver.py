"""Shared machinery of the simulated Exchange Online mail servers (IMAP, POP3, SMTP).

Why a common base: the three protocols differ only in their dialogue; listening, TLS
(implicit or STARTTLS), per-connection bookkeeping, hostile-client limits and, above all, the
server faults the exporter must survive (tarpit, drop after greeting, garbage, slow replies,
bad certificates, "service unavailable") are the same and must behave identically, so the
exporter's network failure reasons can be tested once per protocol with no drift.

Design points:
- TLS is started per connection with `StreamWriter.start_tls` (also for implicit TLS), so the
  certificate (`ServerFault.cert`) is chosen at accept time and can be switched at runtime,
  and a tarpit can hold the TCP connection without even answering the TLS ClientHello.
- Connection-level faults (tarpit, cert, garbage, unavailable, drop_mid) are read once per
  connection; `delay`, `no_xoauth2`, `no_starttls` and `challenge_on_failure` are read live.
- Every read has a length limit and an idle timeout, every connection a command budget, and
  `close()` cancels open connections (a tarpit cannot keep it waiting).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator
from typing import ClassVar

from .certs import SimCerts
from .messages import record_command
from .state import ServerFault, SimState
from .tokens import TokenMinter

log = logging.getLogger(__name__)

# Exchange Online names its front-end servers like this; it appears in greetings and in SMTP
# failure replies ("[HOST]").
SIM_HOST = "SIM0PR01MB0001.namprd01.prod.outlook.com"
LINE_LIMIT = 64 * 1024  # longest command line accepted
IDLE_TIMEOUT = 60.0  # seconds without a complete line before the server hangs up
HANDSHAKE_TIMEOUT = 10.0
MAX_COMMANDS = 1000  # per connection
MAX_CONNECTIONS = 512  # per server; more are closed at once
TARPIT_MAX = 600.0  # a tarpit holds a connection at most this long
CLOSE_WAIT = 2.0  # seconds close() waits for cancelled connections
CERT_CHOICES = ("server", "expired", "wrong_host")
GARBAGE_LINE = 1 << 20  # the garbage fault sends a 1 MiB "line" without newline


class Hangup(Exception):
    """The connection is over: EOF, reset, idle timeout or a TLS failure."""


class LineTooLong(Exception):
    """The client sent more than the line limit without a newline."""


class Connection:
    """One client connection: line-oriented I/O with the server's limits and faults."""

    def __init__(self, server: MailServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.tls = False
        self.aborted = False
        peer = writer.get_extra_info("peername")
        self.peer_ip: str = str(peer[0]) if isinstance(peer, tuple) and peer else "127.0.0.1"

    async def send(self, *lines: str, drain: bool = True) -> None:
        """Send one reply (one or more lines), after the server's `delay` fault.

        `drain=False` returns without yielding to the event loop after the write: needed right
        before STARTTLS's handshake, or the client's ClientHello could be read as plaintext.
        """
        delay = self.server.fault.delay
        if delay > 0:
            await asyncio.sleep(delay)
        self.writer.write("".join(f"{line}\r\n" for line in lines).encode("utf-8"))
        if drain:
            await self._drain()

    def discard_buffered(self) -> int:
        """Drop input read but not yet consumed; returns how many bytes.

        RFC 3207: plaintext pipelined after STARTTLS must not be taken as commands received
        over TLS (the STARTTLS command-injection flaw). StreamReader has no public API for it.
        """
        buffer = getattr(self.reader, "_buffer", None)
        if not isinstance(buffer, bytearray) or not buffer:
            return 0
        size = len(buffer)
        buffer.clear()
        return size

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self.writer.drain(), self.server.idle_timeout)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            raise Hangup(str(exc)) from exc

    async def readline(self) -> str:
        """The next line without CRLF (undecodable bytes replaced), within limit and idle timeout."""
        try:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\n"), self.server.idle_timeout)
        except asyncio.LimitOverrunError as exc:
            raise LineTooLong from exc
        except asyncio.IncompleteReadError as exc:
            raise Hangup("eof") from exc
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            raise Hangup(str(exc) or type(exc).__name__) from exc
        return raw.rstrip(b"\r\n").decode("utf-8", "replace")

    async def start_tls(self) -> bool:
        """Server-side TLS handshake with the certificate chosen by the fault switch now."""
        ctx = self.server.tls_context(self.server.fault.cert)
        try:
            await self.writer.start_tls(ctx, ssl_handshake_timeout=self.server.handshake_timeout)
        except (OSError, ssl.SSLError, TimeoutError, EOFError) as exc:
            log.debug("%s: TLS handshake failed: %s", self.server.protocol, exc)
            self.server.state.count(self.server.protocol, "", "tls_handshake_failed")
            return False
        self.tls = True
        return True

    async def send_garbage(self) -> None:
        """Random bytes (not UTF-8), a bogus line, then a 1 MiB line that never ends."""
        endless = os.urandom(GARBAGE_LINE).replace(b"\n", b"\xff").replace(b"\r", b"\xfe")
        self.writer.write(os.urandom(512) + b"\r\n\xff\xfe\xc3\x28 not a greeting \x80\r\n" + endless)
        await self._drain()

    def abort(self) -> None:
        self.aborted = True
        self.writer.transport.abort()

    async def close(self) -> None:
        """Graceful close (flush, TLS close_notify) bounded in time; abort when shutting down."""
        if self.aborted:
            return
        if self.server.closing:
            self.abort()
            return
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_WAIT)
        except (TimeoutError, OSError, ssl.SSLError):
            self.abort()
        except asyncio.CancelledError:
            self.abort()
            raise


class MailServer:
    """Base of ImapServer, Pop3Server and SmtpServer; subclasses implement the dialogue."""

    protocol: ClassVar[str] = ""  # key of SimState.server_faults and of the counters
    implicit_tls: ClassVar[bool] = True

    def __init__(self, state: SimState, minter: TokenMinter, certs: SimCerts, host_name: str = SIM_HOST):
        self.state = state
        self.minter = minter
        self.certs = certs
        self.host_name = host_name
        # limits, instance attributes so tests can shrink them
        self.idle_timeout = IDLE_TIMEOUT
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.line_limit = LINE_LIMIT
        self.max_commands = MAX_COMMANDS
        self.max_connections = MAX_CONNECTIONS
        self.tarpit_max = TARPIT_MAX
        self.closing = False
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def fault(self) -> ServerFault:
        return self.state.server_fault(self.protocol)

    @property
    def host_tag(self) -> str:
        """base64 of the host name, as Exchange prints it in its IMAP/POP3 greetings."""
        return base64.b64encode(self.host_name.encode()).decode()

    @property
    def connections(self) -> int:
        return len(self._tasks)

    def tls_context(self, which: str) -> ssl.SSLContext:
        if which not in CERT_CHOICES:
            log.warning("%s: unknown cert fault %r, presenting the valid certificate", self.protocol, which)
            which = "server"
        if which not in self._contexts:
            self._contexts[which] = self.certs.server_context(which)
        return self._contexts[which]

    async def start(self, host: str, port: int = 0) -> int:
        """Listen on host:port (0 = ephemeral); returns the bound port."""
        self.closing = False
        self._server = await asyncio.start_server(self._handle, host, port, limit=self.line_limit)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and end every open connection, tarpits included, within ~2 s."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), CLOSE_WAIT)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self.closing or task is None or len(self._tasks) >= self.max_connections:
            writer.transport.abort()
            return
        self._tasks.add(task)  # type: ignore[arg-type]
        conn = Connection(self, reader, writer)
        try:
            await self._serve(conn)
        except asyncio.CancelledError:  # cancel-ok: the top of this connection's own task, nothing above it
            # close(): end quietly (a cancelled client_connected_cb task makes asyncio 3.11 log noise)
            conn.abort()
        except Exception:
            log.exception("%s: connection handler failed", self.protocol)
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            with contextlib.suppress(asyncio.CancelledError):  # cancel-ok: same task top, see above
                await conn.close()

    async def _serve(self, conn: Connection) -> None:
        fault = self.fault
        if fault.tarpit:
            await self._tarpit(conn)
            return
        if self.implicit_tls and not await conn.start_tls():
            return
        try:
            if fault.garbage:
                await conn.send_garbage()
                return
            if fault.unavailable:
                await self.refuse(conn)
                return
            await self.greet(conn)
            if fault.drop_mid:
                return
            try:
                await self.session(conn)
            except LineTooLong:
                await self.line_too_long(conn)
        except Hangup as exc:
            log.debug("%s: connection ended: %s", self.protocol, exc)

    async def _tarpit(self, conn: Connection) -> None:
        """Hold the connection and say nothing (no TLS handshake either) until the client gives up."""
        try:
            async with asyncio.timeout(self.tarpit_max):
                while await conn.reader.read(4096):
                    pass
        except (TimeoutError, OSError):
            pass

    async def commands(self, conn: Connection) -> AsyncIterator[str]:
        """Command lines of one session, at most `max_commands` of them."""
        for _ in range(self.max_commands):
            line = await conn.readline()
            record_command(self.state, self.protocol, line)
            yield line
        log.debug("%s: command budget exhausted, closing", self.protocol)

    # -- protocol hooks -------------------------------------------------------------------

    async def refuse(self, conn: Connection) -> None:
        """The `unavailable` fault's reply; the connection is closed after it."""
        raise NotImplementedError

    async def greet(self, conn: Connection) -> None:
        raise NotImplementedError

    async def session(self, conn: Connection) -> None:
        raise NotImplementedError

    async def line_too_long(self, conn: Connection) -> None:
        """Reply to an over-long line; the connection is closed after it."""
        raise NotImplementedError
