"""TCP and TLS stages of the endpoint probe: connect, SMTP STARTTLS preamble, handshake, close.

Why hand-rolled on asyncio streams rather than `open_connection(ssl=...)`: the metrics need the
TCP connect time and the TLS handshake time separately, and SMTP on 587 needs plaintext
(greeting, EHLO, STARTTLS) between the two. So we connect a plain socket, optionally talk the
minimal SMTP preamble, then upgrade with `StreamWriter.start_tls`.

Every wait is bounded by the probe's deadline (loop time), so a tarpit costs at most the probe
timeout. Nothing here ever sends a credential: the endpoint probe only proves the path and the
certificate; authentication is the mail probes' job.

Errors are mapped to the closed reason set by probes/neterrors.py, shared with the mail probes
and the token provider so one broken path shows the same reason on every check.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass

from ..reasons import Reason
from .dns import Address
from .neterrors import classify, describe
from .result import Transcript

MAX_ADDRESSES = 4  # addresses tried before giving up (bounded fail-over)
MAX_REPLY_LINES = 64  # lines in one SMTP reply
CLOSE_WAIT = 1.0  # seconds we wait for a polite close (QUIT reply, close_notify)


class StageFailure(Exception):
    """A stage failed with a known reason; `detail` is short human text for the result."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: Address

    def abort(self) -> None:
        transport = self.writer.transport
        try:
            transport.abort()
        except (OSError, RuntimeError, AttributeError):  # already gone
            pass


def fmt_address(address: Address) -> str:
    ip, port = address[1][0], address[1][1]
    return f"[{ip}]:{port}" if address[0] == socket.AF_INET6 else f"{ip}:{port}"


# endpoint.py imports the shared mapping from here under this name (with `describe`)
classify_tls_error = classify


# --------------------------------------------------------------------------- TCP


async def connect_one(address: Address, deadline: float) -> Connection:
    """Connect one address by `deadline`; raises OSError/TimeoutError on failure."""
    family, sockaddr = address
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setblocking(False)
        async with asyncio.timeout_at(deadline):
            await asyncio.get_running_loop().sock_connect(sock, sockaddr)
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    return Connection(reader, writer, address)


async def tcp_connect(
    addresses: list[Address], deadline: float, transcript: Transcript
) -> tuple[Connection | None, float, StageFailure | None]:
    """Try up to MAX_ADDRESSES addresses in order. Each but the last gets an equal share of the
    remaining time, so one black-holed address cannot eat the budget of the next.

    Returns (connection, duration of the successful or last attempt, failure). On failure the
    reason is the first address's (the preferred path), every attempt is in the transcript."""
    loop = asyncio.get_running_loop()
    candidates = addresses[:MAX_ADDRESSES]
    first_failure: StageFailure | None = None
    duration = 0.0
    for i, address in enumerate(candidates):
        left = len(candidates) - i
        now = loop.time()
        attempt_deadline = deadline if left == 1 else now + max(0.0, deadline - now) / left
        start = time.perf_counter()
        try:
            conn = await connect_one(address, attempt_deadline)
        except (OSError, TimeoutError) as exc:  # TimeoutError is an OSError; listed for clarity
            duration = time.perf_counter() - start
            reason = classify(exc)
            what = describe(exc)
            where = fmt_address(address)
            transcript.note(f"TCP connect {where} failed after {duration * 1000:.1f} ms: {what}")
            first_failure = first_failure or StageFailure(reason, f"TCP connect {where}: {what}")
            if loop.time() >= deadline:
                break
            continue
        duration = time.perf_counter() - start
        transcript.note(f"TCP connected to {fmt_address(address)} in {duration * 1000:.1f} ms")
        return conn, duration, None
    return None, duration, first_failure or StageFailure(Reason.UNKNOWN, "no address to connect to")


# --------------------------------------------------------------------------- SMTP preamble


async def _smtp_reply(reader: asyncio.StreamReader, transcript: Transcript) -> tuple[int, list[str]]:
    """Read one (possibly multi-line) SMTP reply: (code, text lines without the code)."""
    lines: list[str] = []
    for _ in range(MAX_REPLY_LINES):
        try:
            raw = await reader.readline()
        except ValueError:  # line longer than the stream limit (64 KiB)
            raise StageFailure(Reason.PROTOCOL_ERROR, "SMTP reply line too long") from None
        if not raw.endswith(b"\n"):
            raise StageFailure(Reason.CONNECTION_RESET, "server closed the connection in the SMTP preamble")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        transcript.server(line)
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
            raise StageFailure(Reason.PROTOCOL_ERROR, f"malformed SMTP reply: {line[:80]!r}")
        lines.append(line[4:])
        if line[3:4] != "-":
            return int(line[:3]), lines
    raise StageFailure(Reason.PROTOCOL_ERROR, f"SMTP reply longer than {MAX_REPLY_LINES} lines")


async def _smtp_command(conn: Connection, command: str, transcript: Transcript) -> tuple[int, list[str]]:
    transcript.client(command)
    conn.writer.write(command.encode("ascii") + b"\r\n")
    await conn.writer.drain()
    return await _smtp_reply(conn.reader, transcript)


def _ehlo_name(conn: Connection) -> str:
    """An address literal for EHLO (RFC 5321 4.1.3): never needs a DNS lookup of our own name."""
    try:
        local = conn.writer.get_extra_info("sockname")[0]
    except (TypeError, IndexError):
        return "[127.0.0.1]"
    return f"[IPv6:{local.split('%', 1)[0]}]" if ":" in local else f"[{local}]"


async def smtp_starttls(conn: Connection, deadline: float, transcript: Transcript) -> None:
    """Greeting, EHLO, STARTTLS; raises StageFailure (or TimeoutError/OSError). No AUTH, ever."""
    async with asyncio.timeout_at(deadline):
        code, text = await _smtp_reply(conn.reader, transcript)
        if code != 220:
            reason = Reason.SERVER_UNAVAILABLE if code in (421, 554) else Reason.PROTOCOL_ERROR
            raise StageFailure(reason, f"SMTP greeting {code} {' '.join(text)[:120]}")
        code, text = await _smtp_command(conn, f"EHLO {_ehlo_name(conn)}", transcript)
        if code != 250:
            reason = Reason.SERVER_UNAVAILABLE if code == 421 else Reason.PROTOCOL_ERROR
            raise StageFailure(reason, f"EHLO answered {code} {' '.join(text)[:120]}")
        keywords = {line.split()[0].upper() for line in text[1:] if line.split()}
        if "STARTTLS" not in keywords:
            raise StageFailure(Reason.STARTTLS_UNAVAILABLE, "EHLO reply does not offer STARTTLS")
        code, text = await _smtp_command(conn, "STARTTLS", transcript)
        if code != 220:
            reason = Reason.SERVER_UNAVAILABLE if code == 421 else Reason.STARTTLS_UNAVAILABLE
            raise StageFailure(reason, f"STARTTLS answered {code} {' '.join(text)[:120]}")


# --------------------------------------------------------------------------- TLS


async def tls_handshake(conn: Connection, ctx: ssl.SSLContext, server_name: str, deadline: float) -> None:
    """Upgrade `conn` to TLS in place; raises ssl.SSLError/OSError/TimeoutError on failure."""
    remaining = deadline - asyncio.get_running_loop().time()
    async with asyncio.timeout_at(deadline):
        # asyncio's own handshake timeout would surface as ConnectionAbortedError ("reset"):
        # keep it just beyond ours so the deadline always reports as a timeout.
        await conn.writer.start_tls(ctx, server_hostname=server_name,
                                    ssl_handshake_timeout=max(remaining, 0.0) + 5.0)


def ssl_object(conn: Connection) -> ssl.SSLObject | None:
    return conn.writer.get_extra_info("ssl_object")


async def close(conn: Connection, deadline: float, smtp: bool, transcript: Transcript) -> None:
    """Polite close (SMTP QUIT, TLS close_notify) within CLOSE_WAIT and the deadline, then abort."""
    loop = asyncio.get_running_loop()
    budget = min(CLOSE_WAIT, deadline - loop.time())
    if budget <= 0:
        conn.abort()
        return
    try:
        async with asyncio.timeout(budget):
            if smtp:
                transcript.client("QUIT")
                conn.writer.write(b"QUIT\r\n")
                await conn.writer.drain()
                line = await conn.reader.readline()
                if line:
                    transcript.server(line)
            conn.writer.close()
            await conn.writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError, ValueError, RuntimeError):
        pass
    finally:
        conn.abort()
