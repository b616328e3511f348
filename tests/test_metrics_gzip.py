"""The gzip body (one gzip member of cached deflate chunks, one per run of families) decodes to
exactly the text body (Python, streaming zlib, GNU gzip, curl), after changes and reloads too; a
scrape recompresses only runs whose families changed; keep_warm renders in the background so
scrapes do not, and sliced refreshes give the same bytes."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.server
import shutil
import subprocess
import threading
import time
import zlib
from collections.abc import AsyncIterator

import pytest

from exporter import collector
from exporter.bodyparts import as_bytes
from exporter.collector import OPENMETRICS, TEXT, Body, MetricsRenderer
from exporter.gzmembers import crc32_combine, gzip_body
from exporter.probes.result import ProbeResult
from exporter.reasons import Reason
from tests.test_exposition import CREDS, SHARD, exposition, mailboxes, reference, rich_store


def renderer(n: int) -> MetricsRenderer:
    st = rich_store(n)
    r = MetricsRenderer(st, lambda: CREDS, mailboxes)
    r.add_static(*SHARD)
    return r


def bodies(r: MetricsRenderer, fmt: str) -> tuple[bytes, bytes]:
    """(gzip, text) of the same refresh, without the standard collectors (their values move by
    themselves between two calls); the whole renderer body is checked as well, without them."""
    whole = r.render_sync(fmt, gzipped=True)
    assert m365_only(gzip.decompress(whole)) == m365_only(as_bytes(r._finish(fmt, False)))
    e = r.exposition
    return gzip_body(e.gzip_chunks(fmt)), e.body(fmt)


def m365_only(text: bytes) -> bytes:
    return b"\n".join(ln for ln in text.split(b"\n") if not ln.startswith((b"process_", b"python_", b"# HELP p",
                                                                           b"# TYPE p")))


@contextlib.asynccontextmanager
async def keeping_warm(r: MetricsRenderer) -> AsyncIterator[asyncio.Task[None]]:
    """r.keep_warm() running in the background for the block, cancelled and awaited after it."""
    task = asyncio.create_task(r.keep_warm())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_gzip_decodes_to_the_text_body_in_both_formats_and_after_changes() -> None:
    r = renderer(3000)  # > GZ_MIN_MEMBER: several members
    for fmt in (TEXT, OPENMETRICS):
        gz, text = bodies(r, fmt)
        assert len(r.exposition._gz) > 2  # several chunks
        assert gzip.decompress(gz) == text
        d = zlib.decompressobj(wbits=31)  # one member: a client that reads only the first one gets it all
        assert d.decompress(gz) == text and d.eof and not d.unused_data
    st = r.store
    st.record(("mailbox", "box5@contoso.example", "imap"), ProbeResult.fail(Reason.TIMEOUT, 15.0))
    st.record(("endpoint", "outlook.office365.com", "995"), ProbeResult.fail(Reason.TLS_UNTRUSTED, 0.1))
    gz, text = bodies(r, OPENMETRICS)
    assert gzip.decompress(gz) == text and b'reason="timeout"' in text
    st.prune({k for k in st.keys() if "box3@" not in k[1]})  # a reload
    st.ensure(("mailbox", "new@contoso.example", "imap"), 300, 15)
    gz, text = bodies(r, TEXT)
    assert gzip.decompress(gz) == text and b"box3@" not in text and b"new@contoso.example" in text


def test_unchanged_families_are_not_recompressed() -> None:
    r = renderer(3000)
    e = r.exposition
    r.render_sync(TEXT, gzipped=True)
    first = e.gz_compressed
    assert first > 2
    r.render_sync(TEXT, gzipped=True)
    assert e.gz_compressed == first  # nothing changed: every member reused
    r.store.record(("credential", "app"), ProbeResult.ok(0.4, token_expiry=1.9e9))
    gz, text = bodies(r, TEXT)
    assert 1 <= e.gz_compressed - first < first  # only the runs holding token families
    assert gzip.decompress(gz) == text


def test_gnu_gzip_and_curl_read_the_body() -> None:
    gz, text = bodies(renderer(3000), OPENMETRICS)
    out = subprocess.run(["gzip", "-dc"], input=gz, capture_output=True, timeout=30, check=True).stdout
    assert out == text and b"m365_probe_success{" in out
    if shutil.which("curl") is None:
        return

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(gz)))
            self.end_headers()
            self.wfile.write(gz)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:  # curl 7.88 stops after a first gzip member: the reason the body is one member
        got = subprocess.run(["curl", "-s", "--compressed", f"http://127.0.0.1:{server.server_port}/"],
                             capture_output=True, timeout=30, check=True).stdout
    finally:
        server.shutdown()
    assert got == text


def test_crc32_combine() -> None:
    for a, b in ((b"", b""), (b"a", b""), (b"", b"b"), (b"x" * 1000, bytes(range(256)) * 77)):
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_keep_warm_renders_before_the_first_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "WARM_EVERY", 0.05)
    r = renderer(300)

    async def main() -> None:
        async with keeping_warm(r):
            for _ in range(100):  # bounded: 5 s
                await asyncio.sleep(0.05)
                if r.warm and not r.store.changed:
                    break
            renders = r.exposition.fragment_renders
            assert renders >= 300 * 4  # every key rendered, no scrape asked for it
            body = await r.render(OPENMETRICS)
            assert r.exposition.fragment_renders == renders and b"m365_probe_success{" in body  # scrape: no re-render
            r.store.record(("mailbox", "box8@contoso.example", "imap"), ProbeResult.ok(0.3))
            for _ in range(100):
                await asyncio.sleep(0.05)
                if r.exposition.fragment_renders > renders:
                    break
            assert r.exposition.fragment_renders == renders + 1  # the change, in the background

    asyncio.run(main())


def test_sliced_refresh_gives_the_same_body() -> None:
    st = rich_store(40)
    e = exposition(st)
    e.render()
    for n in range(25):
        st.record(("mailbox", f"box{n + 1}@contoso.example", "imap"), ProbeResult.ok(0.2 + n, messages=float(n)))
    before = e.fragment_renders
    assert e.refresh(limit=10) is False and e.pending  # 10 of 25 rendered
    assert e.fragment_renders == before + 10
    assert e.refresh(limit=10) is False
    assert e.refresh(limit=10) is True and not e.pending
    assert e.render() == reference(st)
    st.prune({k for k in st.keys() if "box3@" not in k[1]})  # a layout change waits for the full refresh
    assert e.refresh(limit=10) is False
    assert e.render() == reference(st) and b"box3@" not in e.render()


def test_warm_only_after_the_first_full_render_and_latched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Readiness (Runtime.ready) waits for MetricsRenderer.warm while keep_warm runs: the first
    full render and compression happen before the exporter says it is ready."""
    monkeypatch.setattr(collector, "WARM_EVERY", 0.05)
    r = renderer(300)
    assert r.warm  # no keep_warm (check, tests): nothing to wait for

    async def main() -> None:
        async with keeping_warm(r):
            await asyncio.sleep(0)
            assert not r.warm and r.exposition.fragment_renders == 0
            for _ in range(100):  # bounded: 5 s
                if r.warm:
                    break
                await asyncio.sleep(0.05)
            assert r.warm and r.exposition.fragment_renders >= 300 * 4
            assert r._cache[OPENMETRICS].gz is not None and r._cache[TEXT].gz is not None  # built before ready
            r.store.prune({k for k in r.store.keys() if "box3@" not in k[1]})  # a reload: re-layout
            await asyncio.sleep(0)
            assert r.warm  # latched: a reload does not flip readiness

    asyncio.run(main())


def test_a_regular_scraper_gets_a_body_built_before_it_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prometheus scrapes at a fixed cadence: after three scrapes (a chain, exporter/cadence.py)
    keep_warm builds the fourth one's body PREBUILD_LEAD before it is due, so that scrape is a
    cache hit although results changed."""
    monkeypatch.setattr(collector, "WARM_EVERY", 0.05)
    r = renderer(300)
    builds: list[float] = []
    real = r._render_now

    def counting(fmt: str = TEXT, gzipped: bool = False) -> Body:
        builds.append(time.monotonic())
        return real(fmt, gzipped)

    monkeypatch.setattr(r, "_render_now", counting)

    async def main() -> None:
        async with keeping_warm(r):
            for _ in range(100):
                if r.warm:
                    break
                await asyncio.sleep(0.05)
            every = 1.5
            for n in range(4):
                r.store.record(("mailbox", f"box{n + 1}@contoso.example", "imap"), ProbeResult.ok(0.2 + n))
                if n:
                    await asyncio.sleep(every)
                    r.store.record(("mailbox", f"box{n + 1}@contoso.example", "pop3"), ProbeResult.ok(0.4 + n))
                before = len(builds)
                asked = time.monotonic()
                body = await r.render(OPENMETRICS, True)
                assert f"box{n + 1}@".encode() in gzip.decompress(body)
            assert len(builds) == before  # the fourth scrape built nothing ...
            assert asked - collector.PREBUILD_LEAD - 0.3 <= builds[-1] < asked  # ... it was built just before
            assert b'mailbox="box4@contoso.example"' in gzip.decompress(body)
            await asyncio.sleep(2 * every + 0.5)  # the scraper stopped: no more prebuilds
            quiet = len(builds)
            await asyncio.sleep(every)
            assert len(builds) == quiet

    asyncio.run(main())


def test_a_text_scrape_keeps_the_other_formats_gzip_body() -> None:
    r = renderer(300)

    async def main() -> None:
        gz = await r.render(OPENMETRICS, True)
        r.store.record(("mailbox", "box2@contoso.example", "imap"), ProbeResult.ok(0.9))
        await r.render(TEXT)  # renders the change for the text format
        assert r._cache[OPENMETRICS].text is None  # its old parts are let go ...
        assert await r.render(OPENMETRICS, True) is gz  # ... its gzip body still served (< MIN_RENDER_INTERVAL)

    asyncio.run(main())


def test_keep_warm_survives_a_rendering_bug(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A failing render is logged and retried; it neither kills keep_warm nor blocks readiness."""
    monkeypatch.setattr(collector, "WARM_EVERY", 0.05)
    r = renderer(50)
    real = r._refresh
    failures = [0]

    def broken() -> None:
        if failures[0] < 2:
            failures[0] += 1
            raise RuntimeError("rendering bug")
        real()

    monkeypatch.setattr(r, "_refresh", broken)

    async def main() -> None:
        async with keeping_warm(r) as warm:
            for _ in range(100):
                if r.warm and failures[0] == 2 and r.exposition._layout == r.store.layout:
                    break
                await asyncio.sleep(0.05)
            assert failures[0] == 2 and r.warm and not warm.done()
            assert r.exposition._layout == r.store.layout  # it went on and rendered once the bug was gone

    asyncio.run(main())
    assert "keeping /metrics warm failed" in caplog.text
