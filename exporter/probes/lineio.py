"""Bounded, timed line reading over an asyncio StreamReader, with typed, classified errors.

Why not `StreamReader.readline()`: it has no timeout, raises a generic ValueError on a line over
its limit (after buffering up to the limit), and happily reads forever from a server that
trickles bytes. A probe talks to servers we do not control (or to TLS-intercepting middleboxes),
so every read here is bounded three ways:

* time: each read waits at most `read_timeout` seconds, or, with `read_timeout=None`, as long as
  the caller's deadline allows (the mail probes: run_probe bounds the whole session, so a
  per-read timer of the same length could never fire first and would only cost two timer-heap
  operations per line);
* line length: a line longer than `max_line` bytes is a protocol error, and we never buffer more
  than `max_line` + one chunk;
* total bytes: a probe session reads at most `max_total` bytes, so a server streaming endless
  untagged lines costs a bounded amount of memory and CPU.

Each failure is a `ProbeFailure` subclass carrying its `Reason` (timeout -> TIMEOUT,
EOF/reset -> CONNECTION_RESET, too long / binary junk / over budget -> PROTOCOL_ERROR), so the
protocol code can let them propagate and the probe wrapper turns them into a ProbeResult.
"""

from __future__ import annotations

import asyncio
import re
import ssl

from ..reasons import Reason

MAX_LINE = 8 * 1024
MAX_TOTAL = 256 * 1024
CHUNK = 4096

# C0 controls except TAB, LF, CR; and DEL. Mail protocol replies are text lines.
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class ProbeFailure(Exception):
    """A classified probe failure: `reason` from the closed set and a short, non-secret detail."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(detail or reason.value)
        self.reason = reason
        self.detail = detail


class LineTimeout(ProbeFailure):
    def __init__(self, detail: str = "no data within the read timeout") -> None:
        super().__init__(Reason.TIMEOUT, detail)


class ConnectionClosed(ProbeFailure):
    def __init__(self, detail: str = "connection closed by the server") -> None:
        super().__init__(Reason.CONNECTION_RESET, detail)


class LineTooLong(ProbeFailure):
    def __init__(self, limit: int) -> None:
        super().__init__(Reason.PROTOCOL_ERROR, f"server sent a line longer than {limit} bytes")


class BinaryData(ProbeFailure):
    def __init__(self) -> None:
        super().__init__(Reason.PROTOCOL_ERROR, "server sent binary data where a text line was expected")


class BudgetExceeded(ProbeFailure):
    def __init__(self, limit: int) -> None:
        super().__init__(Reason.PROTOCOL_ERROR, f"server sent more than {limit} bytes in one probe")


class LineReader:
    """Reads CRLF (or bare LF) terminated lines from a StreamReader within fixed bounds."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        read_timeout: float | None,
        max_line: int = MAX_LINE,
        max_total: int = MAX_TOTAL,
    ) -> None:
        self._reader = reader
        self._buf = bytearray()
        self.read_timeout = read_timeout
        self.max_line = max_line
        self.max_total = max_total
        self.total = 0  # bytes received so far (the budget counter)

    @property
    def pending(self) -> int:
        """Bytes received but not yet consumed (must be 0 before a STARTTLS upgrade)."""
        return len(self._buf)

    async def _fill(self) -> None:
        """Read one chunk into the buffer, or raise a classified failure."""
        room = self.max_total - self.total
        if room <= 0:
            raise BudgetExceeded(self.max_total)
        try:
            if self.read_timeout is None:  # bounded by the caller's deadline
                data = await self._reader.read(min(CHUNK, room + 1))
            else:
                async with asyncio.timeout(self.read_timeout):
                    data = await self._reader.read(min(CHUNK, room + 1))
        except TimeoutError:  # only our own timer: a caller's deadline arrives as cancellation
            raise LineTimeout(f"no data from the server within {self.read_timeout:g}s") from None
        except (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            raise ConnectionClosed(f"connection lost while reading ({type(exc).__name__})") from None
        except ssl.SSLError as exc:
            what = getattr(exc, "reason", None) or type(exc).__name__
            raise ProbeFailure(Reason.PROTOCOL_ERROR, f"TLS error while reading: {what}") from None
        if not data:
            what = "in the middle of a line" if self._buf else "by the server"
            raise ConnectionClosed(f"connection closed {what}")
        self.total += len(data)
        if self.total > self.max_total:
            raise BudgetExceeded(self.max_total)
        self._buf += data

    async def readline(self) -> bytes:
        """One line including its terminator. Raises ProbeFailure subclasses, never hangs."""
        # Each iteration consumes at least one new byte of the bounded budget, or returns/raises.
        for _ in range(self.max_total + 2):
            idx = self._buf.find(b"\n")
            if idx >= 0:
                if idx + 1 > self.max_line:
                    raise LineTooLong(self.max_line)
                line = bytes(self._buf[: idx + 1])
                del self._buf[: idx + 1]
                if _BINARY.search(line.rstrip(b"\r\n")):
                    raise BinaryData()
                return line
            if len(self._buf) > self.max_line:
                raise LineTooLong(self.max_line)
            await self._fill()
        raise BudgetExceeded(self.max_total)  # unreachable: _fill raises first

    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes (an IMAP literal), within the same total budget."""
        if n < 0 or n > self.max_total:
            raise BudgetExceeded(self.max_total)
        for _ in range(self.max_total + 2):
            if len(self._buf) >= n:
                data = bytes(self._buf[:n])
                del self._buf[:n]
                return data
            await self._fill()
        raise BudgetExceeded(self.max_total)  # unreachable: _fill raises first


def decode_line(line: bytes) -> str:
    """Text of a line without its terminator; invalid UTF-8 is replaced, not fatal."""
    return line.rstrip(b"\r\n").decode("utf-8", "replace")
