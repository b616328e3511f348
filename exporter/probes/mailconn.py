"""Connection plumbing shared by the IMAP, POP3 and SMTP probe clients.

Why hand-written clients on asyncio streams instead of aioimaplib / aiosmtplib / poplib:
a monitoring probe needs things those libraries do not give together —

* bounded reads (line length, total bytes) so a hostile or broken server cannot exhaust memory,
  and a timeout on every step plus on the whole probe (a tarpit costs one slot for `timeout`);
* exact classification of every reply and every connect/TLS error into the closed `Reason` set
  (the libraries raise generic exceptions or swallow the server's text);
* a redacted, capped transcript of the dialogue for `/probe?debug=true`, with the XOAUTH2
  response logged as a placeholder, never the bytes we sent;
* full control of the XOAUTH2 exchange (SASL-IR vs. continuation, POP3's separate-line initial
  response, the error-challenge dance) and a guarantee that nothing mutates the mailbox
  (IMAP EXAMINE, never SELECT; SMTP never sends mail). poplib has no AUTH at all.

This module holds what the three protocols share: resolving and connecting (implicit TLS or
STARTTLS upgrade on the same connection), classification of connect/TLS/DNS errors (the mapping
itself is probes/neterrors.py, shared with the endpoint probe and the token provider), a tiny rule
engine for reply classification (each protocol keeps its own table next to its code), and
`run_probe`, the wrapper that guarantees a ProbeResult is always returned, the connection is
always closed within the deadline, and no secret reaches the transcript or the detail.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ..config import Endpoint
from ..reasons import Reason
from ..redact import ProbeSecrets
from . import dns as dnsprobe
from . import neterrors
from .lineio import ConnectionClosed, LineReader, ProbeFailure, decode_line
from .result import ProbeResult, Transcript, new_transcript
from .tlsctx import client_context, server_hostname
from .tlsresume import EndpointKey, ResumingContext, offering

__all__ = [
    "MailConnection",
    "ProbeFailure",
    "ReplyRule",
    "classify_exception",
    "classify_reply",
    "rule",
    "run_probe",
]

MAX_ADDRESSES = 4  # resolved addresses tried in turn on refusal / unreachable
GOODBYE_TIMEOUT = 1.0  # LOGOUT / QUIT: polite, but never worth more than this
CLOSE_TIMEOUT = 0.5  # waiting for the transport to close (TLS close_notify) before aborting
DETAIL_CHARS = 300

# Reasons after which the session is still orderly, so LOGOUT/QUIT is polite and safe.
_POLITE_AFTER = frozenset({
    Reason.AUTH_FAILED,
    Reason.SMTP_AUTH_DISABLED,
    Reason.SECURITY_DEFAULTS,
    Reason.CONDITIONAL_ACCESS,
    Reason.INVALID_USER,
    Reason.XOAUTH2_NOT_OFFERED,
    Reason.STARTTLS_UNAVAILABLE,
    Reason.MAILBOX_NOT_ACCESSIBLE,
    Reason.SERVER_TEMPORARY_FAILURE,
    Reason.MAILBOX_IN_USE,
})


@functools.lru_cache(maxsize=1024)
def _literal_family(host: str) -> int | None:
    """AF_INET/AF_INET6 when `host` is an IP literal, else None (cached: parsed once per host,
    not on every probe)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def classify_exception(exc: BaseException, step: str, timeout: float) -> tuple[Reason, str]:
    """Map an exception raised during `step` to (reason, short non-secret detail)."""
    if isinstance(exc, ProbeFailure):
        return exc.reason, exc.detail
    if isinstance(exc, TimeoutError):  # our own step/probe deadline: say which, and how long
        if step == "resolve":
            return Reason.DNS_TIMEOUT, f"DNS lookup did not finish within {timeout:g}s"
        return Reason.TIMEOUT, f"no answer within {timeout:g}s"
    reason = neterrors.classify(exc)
    if reason is Reason.TLS_HANDSHAKE_FAILED and step != "tls handshake":
        # a TLS alert or bad record once the session is up: the server broke the protocol
        what = getattr(exc, "reason", None) or type(exc).__name__
        return Reason.PROTOCOL_ERROR, f"TLS error after the handshake: {what}"
    return reason, neterrors.describe(exc)


# --------------------------------------------------------------------------- reply rules


@dataclass(frozen=True)
class ReplyRule:
    """One row of a protocol's reply classification table; the first matching row wins.

    `status` is matched as a prefix of the reply's status (IMAP `NO`/`BAD`/`BYE`, POP3 `-ERR`,
    SMTP `535` or just `5`); `pattern` is searched (case-insensitive) in the reply text; `steps`
    limits the row to some dialogue steps. None means "any".
    """

    reason: Reason
    status: str | None = None
    pattern: re.Pattern[str] | None = None
    steps: frozenset[str] | None = None

    def matches(self, step: str, status: str, text: str) -> bool:
        if self.steps is not None and step not in self.steps:
            return False
        if self.status is not None and not status.upper().startswith(self.status.upper()):
            return False
        return self.pattern is None or self.pattern.search(text) is not None


def rule(reason: Reason, status: str | None = None, pattern: str | None = None,
         steps: Iterable[str] | None = None) -> ReplyRule:
    return ReplyRule(reason, status, re.compile(pattern, re.I) if pattern else None,
                     frozenset(steps) if steps is not None else None)


def classify_reply(rules: Iterable[ReplyRule], step: str, status: str, text: str) -> Reason:
    """The reason of the first matching rule; a reply no rule explains is a protocol error."""
    for r in rules:
        if r.matches(step, status, text):
            return r.reason
    return Reason.PROTOCOL_ERROR


# --------------------------------------------------------------------------- connection


class MailConnection:
    """One probe's connection: bounded line IO, transcript, step tracking, secret scrubbing."""

    def __init__(self, endpoint: Endpoint, transcript: Transcript, *, step_timeout: float,
                 secrets: Iterable[str] = ()) -> None:
        self.endpoint = endpoint
        self.transcript = transcript
        self.step_timeout = step_timeout
        self.step = "resolve"
        self.healthy = False  # an orderly session exists (greeting seen, no IO failure since)
        self._secrets = ProbeSecrets(secrets)  # this probe's token and SASL response
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lines: LineReader | None = None
        self.tls_version: str | None = None
        self._resume: tuple[ResumingContext, EndpointKey, ssl.SSLObject] | None = None
        # The last line as received, before scrubbing: only for decoding a server's error challenge
        # (describe_challenge keeps a few safe fields), since the scrub may mask base64 that merely
        # coincides with a token's public claims (e.g. the same scope URL). Never shown or logged.
        self.last_raw = ""

    # -- secrets -------------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        """Remove our own secrets (token, SASL string), and any >= 16-char piece of them, should a
        server echo them back (whole or in part)."""
        return self._secrets.scrub(text)

    # -- connect -------------------------------------------------------------------------
    async def connect(self, *, tls: bool) -> None:
        """Resolve, connect (trying up to MAX_ADDRESSES addresses) and optionally start TLS."""
        loop = asyncio.get_running_loop()
        host, port = self.endpoint.host, self.endpoint.port
        self.step = "resolve"
        addrs: list[tuple[int, str]] = []
        literal = _literal_family(host)
        if literal is not None:  # an IP literal needs no lookup (and no executor thread)
            addrs.append((literal, host))
        else:
            if self.endpoint.resolvers:  # the configured resolvers, as the DNS check asks them
                outcome = await dnsprobe.resolve(host, port, list(self.endpoint.resolvers),
                                                 loop.time() + self.step_timeout)
                if not outcome.success:
                    raise ProbeFailure(outcome.reason or Reason.DNS_SERVFAIL, outcome.detail) from None
                addrs += [(family, str(sockaddr[0])) for family, sockaddr in outcome.addresses]
                self.transcript.note(f"resolved {host} via {', '.join(self.endpoint.resolvers)}")
            else:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                for family, _type, _proto, _canon, sockaddr in infos:
                    entry = (family, str(sockaddr[0]))
                    if entry not in addrs:
                        addrs.append(entry)
        if not addrs:
            raise ProbeFailure(Reason.DNS_NXDOMAIN, f"{host} has no addresses")
        self.step = "connect"
        last: OSError | None = None
        for family, addr in addrs[:MAX_ADDRESSES]:
            try:
                with offering(self._tls_key()):  # uvloop runs the later handshake in this context
                    self._reader, self._writer = await asyncio.open_connection(addr, port, family=family)
            except OSError as exc:
                if neterrors.classify(exc) is Reason.CONNECTION_REFUSED:  # refused or unreachable
                    self.transcript.note(f"connect to {addr} port {port}: {type(exc).__name__}")
                    last = exc
                    continue
                raise
            self.transcript.note(f"connected to {addr} port {port}")
            break
        if self._writer is None or self._reader is None:
            raise last if last is not None else ConnectionRefusedError("no address accepted")
        self._lines = LineReader(self._reader, read_timeout=None)  # run_probe's deadline bounds reads
        if tls:
            await self.start_tls()

    def _tls_key(self) -> EndpointKey:
        return (self.endpoint.host, self.endpoint.port, server_hostname(self.endpoint.tls, self.endpoint.host))

    async def start_tls(self) -> None:
        """TLS on the current connection (implicit TLS right after connect, or after STARTTLS)."""
        assert self._writer is not None and self._reader is not None and self._lines is not None
        pending_plain = self._lines.pending + len(getattr(self._reader, "_buffer", b""))
        if pending_plain:
            # Bytes sent before the handshake must never be read as if TLS protected them
            # (the STARTTLS command-injection class of bugs).
            self.healthy = False
            raise ProbeFailure(Reason.PROTOCOL_ERROR,
                               f"server sent {pending_plain} bytes of plaintext before the TLS handshake")
        try:
            ctx = client_context(self.endpoint.tls)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ProbeFailure(Reason.UNKNOWN,
                               f"cannot load TLS settings (ca_file): {type(exc).__name__}") from None
        key = self._tls_key()
        sni = key[2]
        self.step = "tls handshake"
        try:
            with offering(key):  # asyncio runs the handshake in the context start_tls is called from
                await self._writer.start_tls(ctx, server_hostname=sni, ssl_handshake_timeout=self.step_timeout)
        except Exception:
            ctx.forget(key)
            raise
        ssl_obj = self._writer.get_extra_info("ssl_object")
        self.tls_version = ssl_obj.version() if ssl_obj is not None else None
        resumed = ssl_obj is not None and ssl_obj.session_reused
        how = "resumed a session verified" if resumed else "verified"
        self.transcript.note(f"TLS established ({self.tls_version or 'unknown version'}, {how} as {sni})")
        if ssl_obj is not None:
            self._resume = (ctx, key, ssl_obj)

    # -- line IO -------------------------------------------------------------------------
    async def send(self, text: str, *, shown: str | None = None) -> None:
        """Send one line (CRLF added). `shown` replaces the text in the transcript (secrets)."""
        assert self._writer is not None
        if self.transcript.enabled:  # background probes record nothing: no scrub to pay for
            self.transcript.client(self.scrub(text if shown is None else shown))
        try:
            self._writer.write(text.encode("utf-8") + b"\r\n")
            await self._writer.drain()  # a server that stops reading: run_probe's deadline ends it
        except (ConnectionError, ssl.SSLError) as exc:
            self.healthy = False
            raise ConnectionClosed(f"connection lost while sending ({type(exc).__name__})") from None

    async def readline(self) -> str:
        """One server line as text (terminator removed). Scrubbed and recorded when the transcript
        records; otherwise as received: details made from it are scrubbed by fail() and run_probe."""
        assert self._lines is not None
        try:
            raw = await self._lines.readline()
        except ProbeFailure as exc:
            self.healthy = False
            self.transcript.note(exc.detail)
            raise
        self.last_raw = decode_line(raw)
        if not self.transcript.enabled:
            # nothing recorded (a background probe): every detail built from this text is
            # scrubbed on its way out (fail(), run_probe), so scrubbing here too is only cost
            return self.last_raw
        text = self.scrub(self.last_raw)
        self.transcript.server(text)
        return text

    async def readexactly(self, n: int) -> bytes:
        """An IMAP literal's bytes (recorded in the transcript only as its size)."""
        assert self._lines is not None
        try:
            data = await self._lines.readexactly(n)
        except ProbeFailure as exc:
            self.healthy = False
            self.transcript.note(exc.detail)
            raise
        self.transcript.note(f"[literal of {n} bytes]")
        return data

    def fail(self, reason: Reason, step_text: str) -> ProbeFailure:
        """A classified failure quoting the server's (scrubbed, shortened) reply."""
        if reason in (Reason.PROTOCOL_ERROR, Reason.SERVER_UNAVAILABLE):
            self.healthy = False
        return ProbeFailure(reason, self.scrub(step_text)[:DETAIL_CHARS])

    # -- teardown ------------------------------------------------------------------------
    def abort(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.transport.abort()

    async def close(self, deadline: float) -> None:
        """Close and wait for it, but never past `deadline` nor CLOSE_TIMEOUT; then abort.
        A TLS session that carried an orderly dialogue is kept for the next probe first (by
        now a TLS 1.3 server's session tickets have arrived)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if self._resume is not None and self.healthy:
            ctx, key, ssl_obj = self._resume
            ctx.remember(key, ssl_obj)
        loop = asyncio.get_running_loop()
        wait = min(CLOSE_TIMEOUT, deadline - loop.time())
        closed = False
        try:
            writer.close()
            if wait > 0:
                async with asyncio.timeout(wait):
                    await writer.wait_closed()
                closed = True
        except Exception:
            pass  # closing is best effort: reset, timeout, TLS alerts
        finally:
            if not closed:
                writer.transport.abort()


# --------------------------------------------------------------------------- the wrapper

Session = Callable[[MailConnection], Awaitable[dict[str, float | str]]]
Goodbye = Callable[[MailConnection], Awaitable[None]]


async def run_probe(
    endpoint: Endpoint,
    timeout: float,  # the probe budget, applied with asyncio.timeout_at
    *,
    implicit_tls: bool,
    session: Session,
    goodbye: Goodbye,
    secrets: Iterable[str] = (),
) -> ProbeResult:
    """Connect, run `session` within `timeout`, say goodbye if orderly, close. Never raises
    (except cancellation, which aborts the connection and propagates)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout
    transcript = new_transcript()
    conn = MailConnection(endpoint, transcript, step_timeout=timeout, secrets=secrets)
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await conn.connect(tls=implicit_tls)
                facts = await session(conn)
            result = ProbeResult.ok(loop.time() - start, transcript, **facts)
        except Exception as exc:
            reason, detail = classify_exception(exc, conn.step, timeout)
            detail = conn.scrub(f"{conn.step}: {detail}")
            transcript.note(f"probe failed: {reason.value} ({detail})")
            result = ProbeResult.fail(reason, loop.time() - start, detail, transcript)
        if conn.healthy and (result.success or result.reason in _POLITE_AFTER):
            polite_until = min(deadline, loop.time() + GOODBYE_TIMEOUT)
            if polite_until > loop.time():
                try:
                    async with asyncio.timeout_at(polite_until):
                        await goodbye(conn)
                except Exception:
                    pass  # best effort: the result is already decided
        await conn.close(deadline)
    except BaseException:
        conn.abort()
        raise
    return result
