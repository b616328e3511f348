"""Property tests: hostile servers never crash, hang or leak through the mail probe clients.

Why: the probes talk to servers (and TLS-intercepting middleboxes) we do not control. For any
reply — random bytes, huge lines, lines without a newline, invalid base64 after `+`/`334`,
non-UTF-8, an abrupt close — at any point of an otherwise valid Exchange Online dialogue, the
probe must return a failed ProbeResult with a Reason from the closed set, within its timeout
(+1 s), without the token or the SASL string in its transcript or detail.

Bounded on purpose: 50 examples per protocol, each server closes right after its hostile
reply, so every example finishes in milliseconds (tarpits are covered in
test_probe_mail_clients.py).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trustme
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exporter.config import Endpoint, TLSSettings
from exporter.probes.imap import probe_imap
from exporter.probes.pop3 import probe_pop3
from exporter.probes.result import ProbeResult
from exporter.probes.sasl import xoauth2_b64
from exporter.probes.smtp import probe_smtp
from exporter.reasons import Reason

USER = "support@example.com"
TOKEN = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJmdXp6LXByb2JlLXRva2VuIn0.ZnV6ei1zaWduYXR1cmUtc2VjcmV0LXZhbHVl"
SASL = xoauth2_b64(USER, TOKEN)
TIMEOUT = 3.0
UPGRADE = b"<starttls>"  # marker in a server turn list: upgrade to TLS after sending the previous turn

# Valid Exchange Online dialogues as server turns; the server reads one client line between turns.
IMAP_TURNS = [
    b"* OK The Microsoft Exchange IMAP4 service is ready.\r\n",
    b"* CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR\r\nA0 OK CAPABILITY completed.\r\n",
    b"A1 OK AUTHENTICATE completed.\r\n",
    b"* 4 EXISTS\r\n* 0 RECENT\r\nA2 OK [READ-ONLY] EXAMINE completed.\r\n",
]
POP3_TURNS = [
    b"+OK The Microsoft Exchange POP3 service is ready.\r\n",
    b"+OK\r\nUIDL\r\nSASL PLAIN XOAUTH2\r\n.\r\n",
    b"+ \r\n",
    b"+OK User successfully authenticated.\r\n",
    b"+OK 4 1000\r\n",
]
SMTP_TURNS = [
    b"220 outlook.office365.com Microsoft ESMTP MAIL Service ready\r\n",
    b"250-outlook.office365.com Hello\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n",
    b"220 2.0.0 SMTP server ready\r\n",
    UPGRADE,
    b"250-outlook.office365.com Hello\r\n250-AUTH LOGIN XOAUTH2\r\n250 SMTPUTF8\r\n",
    b"235 2.7.0 Authentication successful\r\n",
]

hostile = st.one_of(
    st.binary(max_size=2048),  # random bytes (then the server hangs up)
    st.integers(9_000, 300_000).map(lambda n: b"* " + b"A" * n + b"\r\n"),  # huge line
    st.integers(9_000, 60_000).map(lambda n: b"x" * n),  # long, never a newline
    st.binary(max_size=300).map(lambda b: b"+ " + b.replace(b"\n", b"") + b"\r\n"),  # junk challenge
    st.binary(max_size=300).map(lambda b: b"334 " + b.replace(b"\n", b"") + b"\r\n"),
    st.text(max_size=200).map(lambda t: b"+ " + t.encode("utf-16") + b"\r\n"),  # non-UTF-8 text
    st.binary(min_size=1, max_size=200).map(lambda b: b"\xff\xfe\xc3(" + b + b"\r\n"),
    st.just(b""),  # abrupt close
)


class PKI(NamedTuple):
    ca_file: Path
    server_ctx: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("fuzzpki") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return PKI(ca_file, ctx)


async def _serve(turns: list[bytes], hostile_at: int, payload: bytes, ctx: ssl.SSLContext,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Replay turns[:hostile_at], then send `payload` instead of turn `hostile_at`, then hang up."""
    try:
        for i, turn in enumerate(turns):
            if turn == UPGRADE:
                await writer.start_tls(ctx)
                continue
            # the client sends one line before every turn but the greeting
            if i > 0 and not await asyncio.wait_for(reader.readline(), 5):
                return
            writer.write(payload if i == hostile_at else turn)
            await asyncio.wait_for(writer.drain(), 5)
            if i == hostile_at:
                return
    except (ConnectionError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


Probe = Callable[[Endpoint, str, str, float], Awaitable[ProbeResult]]


async def _run(pki: PKI, probe: Probe, turns: list[bytes], hostile_at: int, payload: bytes,
               implicit_tls: bool) -> tuple[ProbeResult, float]:
    tasks: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        await _serve(turns, hostile_at, payload, pki.server_ctx, reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=pki.server_ctx if implicit_tls else None)
    port = server.sockets[0].getsockname()[1]
    endpoint = Endpoint("127.0.0.1", port, TLSSettings(ca_file=pki.ca_file), starttls=not implicit_tls)
    start = time.monotonic()
    try:
        result = await probe(endpoint, USER, TOKEN, TIMEOUT)
    finally:
        elapsed = time.monotonic() - start
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result, elapsed


def _check(result: ProbeResult, elapsed: float) -> None:
    assert isinstance(result, ProbeResult)
    assert result.success is False
    assert isinstance(result.reason, Reason)
    event(f"reason={result.reason.value}")  # shown by --hypothesis-show-statistics
    assert elapsed < TIMEOUT + 1, elapsed
    dump = result.transcript.render() + result.detail
    assert TOKEN not in dump and SASL not in dump


FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(hostile_at=st.integers(0, len(IMAP_TURNS) - 1), payload=hostile)
def test_imap_hostile_server(pki: PKI, hostile_at: int, payload: bytes) -> None:
    result, elapsed = asyncio.run(_run(pki, probe_imap, IMAP_TURNS, hostile_at, payload, True))
    _check(result, elapsed)


@FUZZ
@given(hostile_at=st.integers(0, len(POP3_TURNS) - 1), payload=hostile)
def test_pop3_hostile_server(pki: PKI, hostile_at: int, payload: bytes) -> None:
    result, elapsed = asyncio.run(_run(pki, probe_pop3, POP3_TURNS, hostile_at, payload, True))
    _check(result, elapsed)


@FUZZ
@given(hostile_at=st.sampled_from([i for i, t in enumerate(SMTP_TURNS) if t != UPGRADE]), payload=hostile)
def test_smtp_hostile_server(pki: PKI, hostile_at: int, payload: bytes) -> None:
    result, elapsed = asyncio.run(_run(pki, probe_smtp, SMTP_TURNS, hostile_at, payload, False))
    _check(result, elapsed)


@FUZZ
@given(garbage=st.binary(min_size=1, max_size=4096))
def test_garbage_instead_of_tls(pki: PKI, garbage: bytes) -> None:
    """A plaintext (or junk-speaking) server on the implicit-TLS port: classified, not a crash."""

    async def run() -> tuple[ProbeResult, float]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(garbage)
            try:
                await asyncio.wait_for(writer.drain(), 5)
            except (ConnectionError, TimeoutError):
                pass
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        endpoint = Endpoint("127.0.0.1", server.sockets[0].getsockname()[1], TLSSettings(ca_file=pki.ca_file))
        start = time.monotonic()
        try:
            result = await probe_imap(endpoint, USER, TOKEN, TIMEOUT)
        finally:
            server.close()
        return result, time.monotonic() - start

    result, elapsed = asyncio.run(run())
    _check(result, elapsed)
    assert result.reason in (Reason.TLS_HANDSHAKE_FAILED, Reason.CONNECTION_RESET)
