"""Uncompressed /metrics bodies are written from the exposition's parts (bodyparts.py), never
joined whole: over a real socket the body is complete and byte-identical to the joined one,
serving it allocates a small fraction of its size (tracemalloc), HEAD answers the length alone,
and a client that stops reading is cut off after the write deadline instead of pinning the
parts and a handler for ever."""

from __future__ import annotations

import asyncio
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
from aiohttp import web

from exporter import web as webmod
from exporter.bodyparts import WRITE_RUN, BodyParts
from exporter.collector import TEXT, MetricsRenderer
from tests.test_exposition import CREDS, mailboxes, rich_store

MAILBOXES = 6000  # a ~12 MB text body: more than loopback's socket buffers (4 MB) can swallow


@asynccontextmanager
async def metrics_server(renderer: MetricsRenderer) -> AsyncIterator[int]:
    """The real /metrics handler on a loopback port, in front of `renderer`."""
    app = web.Application()
    app[webmod.RUNTIME] = SimpleNamespace(renderer=renderer)  # type: ignore[assignment]  # the handler reads .renderer only
    app.router.add_get("/metrics", webmod.metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def request(port: int, method: str = "GET", rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(f"{method} /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return s


def read_all(s: socket.socket, keep: bool) -> tuple[bytes, int]:
    """(head + the body if `keep`, bytes received in all); reads into one buffer, allocates nothing
    per chunk when not keeping, so tracemalloc sees the server alone."""
    buf = bytearray(65536)
    kept, total = bytearray(), 0
    with s:
        while True:
            try:
                n = s.recv_into(buf)
            except ConnectionResetError:
                break
            if n == 0:
                break
            total += n
            if keep or len(kept) < 4096:
                kept += buf[:n]
    return bytes(kept), total


def m365_only(body: bytes) -> list[bytes]:
    return [ln for ln in body.split(b"\n") if ln.startswith((b"m365_", b"# HELP m365_", b"# TYPE m365_"))]


async def test_plain_body_complete_and_identical_without_joining() -> None:
    r = MetricsRenderer(rich_store(MAILBOXES), lambda: CREDS, mailboxes)
    joined = r.render_sync()
    assert len(joined) > 10 * 2**20
    async with metrics_server(r) as port:
        raw, _ = await asyncio.to_thread(read_all, request(port), True)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"content-length: %d" % len(body) in head.lower()
        assert m365_only(body) == m365_only(joined)  # the process_* / python_* lines move with time
        assert isinstance(r._cache[TEXT].text, BodyParts)

        tracemalloc.start()
        try:
            _, total = await asyncio.to_thread(read_all, request(port), False)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total > len(body)  # head + the whole body again
        # the parts list (refs) and a few runs in flight; joining would be > 12 MB
        assert peak < len(body) / 4, (peak, len(body), WRITE_RUN)


async def test_head_answers_the_length_alone() -> None:
    r = MetricsRenderer(rich_store(50), lambda: CREDS, mailboxes)
    async with metrics_server(r) as port:
        raw, _ = await asyncio.to_thread(read_all, request(port, "HEAD"), True)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert body == b"" and b"content-length: " in head.lower()
        assert int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]) > 1000


async def test_a_client_that_stops_reading_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webmod, "WRITE_DEADLINE", 0.5)
    r = MetricsRenderer(rich_store(MAILBOXES), lambda: CREDS, mailboxes)
    length = len(r.render_sync())
    async with metrics_server(r) as port:
        s = request(port, rcvbuf=4096)
        await asyncio.sleep(2.0)  # reads nothing while the deadline passes
        t0 = time.monotonic()
        _, total = await asyncio.to_thread(read_all, s, False)
        assert total < length  # cut off: the rest was never sent
        assert time.monotonic() - t0 < 5  # and the connection was closed, not left hanging
