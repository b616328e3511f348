"""The kept TLS session is set on each new connection by reference (probes/sslshare.py), against
the simulator's real TLS servers, under the standard loop and uvloop: the fast path is taken
where it can be (CPython on POSIX) and the probes still resume; a session OpenSSL marked bad (a
probe that used it timed out and was aborted without a TLS shutdown) is forgotten, so the next
probe verifies in full; without the fast path (switched off, or objects it cannot vouch for)
CPython's copying setter is used and nothing breaks."""

from __future__ import annotations

import gc
import os
import ssl
import sys
from pathlib import Path

import pytest

from exporter.config import TLSSettings
from exporter.probes import sslshare, tlsresume
from exporter.probes.imap import probe_imap
from exporter.probes.tlsctx import client_context
from exporter.simulator.certs import make_certs
from tests.simenv import Env
from tests.test_tls_resume import LOOPS, USER, Run, handshake_note, imap_target, make_runner

FAST = sys.implementation.name == "cpython" and os.name == "posix"


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    return make_runner(request.param, tmp_path)


@pytest.fixture
def shares(monkeypatch: pytest.MonkeyPatch) -> list[sslshare.Shared]:
    """What every offer of a kept session came to (spy on tlsresume's call of sslshare.share)."""
    seen: list[sslshare.Shared] = []
    real = sslshare.share

    def spy(sslobj: ssl.SSLObject, context: ssl.SSLContext, session: ssl.SSLSession) -> sslshare.Shared:
        seen.append(real(sslobj, context, session))
        return seen[-1]

    monkeypatch.setattr(tlsresume, "share", spy)
    return seen


@pytest.fixture
def reload_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """sslshare looks for libssl once per process: look again under this test's environment."""
    monkeypatch.setattr(sslshare, "_loaded", False)
    monkeypatch.setattr(sslshare, "_lib", None)


@pytest.mark.skipif(not FAST, reason="the by-reference path is for CPython on POSIX")
def test_the_kept_session_is_shared_and_resumed(run: Run, shares: list[sslshare.Shared]) -> None:
    async def body(env: Env) -> None:
        ep, token, _ctx, _key = await imap_target(env)
        first = await probe_imap(ep, USER, token, 5.0)
        assert shares == []  # nothing kept yet: a full handshake
        results = [await probe_imap(ep, USER, token, 5.0) for _ in range(3)]
        assert all(r.success for r in [first, *results])
        assert shares == [sslshare.Shared.SHARED] * 3
        assert all("resumed a session verified as" in handshake_note(r) for r in results)

    run(body)


class MemoryPair:
    """A client connection of `ctx` (offering `key`'s kept session) and a server of `server`, in
    memory, so the test decides which TLS records the client has read when it goes away."""

    def __init__(self, ctx: tlsresume.ResumingContext, server: ssl.SSLContext, key: tlsresume.EndpointKey) -> None:
        self.bios = [ssl.MemoryBIO() for _ in range(4)]
        with tlsresume.offering(key):
            self.client = ctx.wrap_bio(self.bios[0], self.bios[1], server_hostname=key[2])
        self.server = server.wrap_bio(self.bios[2], self.bios[3], server_side=True)

    def handshake(self) -> None:
        done = [False, False]
        for _ in range(10):
            for i, side in enumerate((self.client, self.server)):
                if not done[i]:
                    try:
                        side.do_handshake()
                        done[i] = True
                    except ssl.SSLWantReadError:
                        pass
            self.bios[2].write(self.bios[1].read())
            if done == [True, True]:
                return
            self.bios[0].write(self.bios[3].read())
        raise AssertionError("no handshake")

    def greeting_and_goodbye(self) -> None:
        """The server's tickets and a line reach the client; both sides shut TLS down."""
        self.server.write(b"* OK\r\n")
        self.bios[0].write(self.bios[3].read())
        assert self.client.read(100) == b"* OK\r\n"
        with pytest.raises(ssl.SSLWantReadError):
            self.client.unwrap()  # close_notify sent: OpenSSL keeps the session good


def test_a_session_left_without_tls_shutdown_is_forgotten(tmp_path: Path) -> None:
    """A connection that resumed and was dropped after its handshake, before reading anything
    (so still on the kept session itself) and without a TLS shutdown, makes OpenSSL mark that
    session not resumable: the next connection is not offered it (a full, verified handshake),
    and a session from that one is kept again. (CPython's copy would clear the mark.)"""
    certs = make_certs(tmp_path)
    server = certs.server_context()
    ctx = client_context(TLSSettings(ca_file=certs.ca_file))
    key: tlsresume.EndpointKey = ("127.0.0.1", 993, "localhost")

    first = MemoryPair(ctx, server, key)
    first.handshake()
    first.greeting_and_goodbye()
    ctx.remember(key, first.client)
    dropped = MemoryPair(ctx, server, key)
    dropped.handshake()
    if FAST:
        assert dropped.client.session_reused
        del dropped
        gc.collect()
        third = MemoryPair(ctx, server, key)
        assert ctx.session_for(key) is None  # forgotten when it was offered
        third.handshake()
        assert not third.client.session_reused  # verified in full
        third.greeting_and_goodbye()
        ctx.remember(key, third.client)
    fourth = MemoryPair(ctx, server, key)
    fourth.handshake()
    assert fourth.client.session_reused


def test_switched_off_the_session_is_copied_and_still_resumed(
        run: Run, shares: list[sslshare.Shared], reload_library: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M365_TLS_SHARE", "0")

    async def body(env: Env) -> None:
        ep, token, _ctx, _key = await imap_target(env)
        assert (await probe_imap(ep, USER, token, 5.0)).success
        second = await probe_imap(ep, USER, token, 5.0)
        assert second.success and "resumed a session verified as" in handshake_note(second)
        assert shares == [sslshare.Shared.UNAVAILABLE]  # CPython's setter (a copy) did it

    run(body)


@pytest.mark.skipif(not FAST, reason="the by-reference path is for CPython on POSIX")
def test_objects_it_cannot_vouch_for_are_left_to_cpython(run: Run) -> None:
    async def body(env: Env) -> None:
        ep, token, ctx, key = await imap_target(env)
        assert (await probe_imap(ep, USER, token, 5.0)).success
        kept = ctx.session_for(key)
        assert kept is not None
        other = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        fresh = other.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=key[2])
        assert sslshare.share(fresh, other, kept) is sslshare.Shared.UNAVAILABLE  # another context's session
        mine = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=key[2])
        assert sslshare.share(mine, other, kept) is sslshare.Shared.UNAVAILABLE  # context named wrongly
        started = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=key[2])
        with pytest.raises(ssl.SSLWantReadError):
            started.do_handshake()  # the ClientHello is written: too late for a session
        assert sslshare.share(started, ctx, kept) is sslshare.Shared.UNAVAILABLE
        assert sslshare.share(mine, ctx, kept) is sslshare.Shared.SHARED

    run(body)
