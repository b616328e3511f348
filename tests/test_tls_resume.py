"""TLS session resumption (probes/tlsresume.py) against the simulator's real TLS servers:
the second mail probe of an endpoint resumes the first one's verified session; a session is
offered for at most MAX_AGE after the full handshake it descends from; a failed handshake
forgets it, so a certificate broken on the server fails every later probe, not just one; the
TLS check never resumes; a session never crosses endpoints. Under the standard loop and under
uvloop (the exporter's loop on Linux), which run the handshake in different contexts."""

from __future__ import annotations

import asyncio
import importlib.util
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from exporter.config import Config, Endpoint
from exporter.probes import tlsresume
from exporter.probes.endpoint import probe_endpoint
from exporter.probes.imap import probe_imap
from exporter.probes.pop3 import probe_pop3
from exporter.probes.result import ProbeResult
from exporter.probes.smtp import probe_smtp
from exporter.probes.tlsctx import client_context, server_hostname
from exporter.reasons import Reason
from tests.simenv import Env, runtime_for, start_env

USER = "sales@contoso.example"
LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


Run = Callable[[Callable[[Env], Awaitable[None]]], None]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    return make_runner(request.param, tmp_path)


def make_runner(loop: str, tmp_path: Path) -> Run:
    """Runs a test body with a fresh simulator on a new loop of the kind `loop`; the contexts
    (and the sessions on them) of earlier tests are dropped first."""
    def runner(body: Callable[[Env], Awaitable[None]]) -> None:
        async def main() -> None:
            env = await start_env(tmp_path, delegated_login=False)
            try:
                await body(env)
            finally:
                await env.sim.close()

        client_context.cache_clear()
        start: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
        if loop == "uvloop":
            import uvloop
            start = uvloop.run
        start(main())

    return runner


def handshake_note(result: ProbeResult) -> str:
    notes = [text for _, text in result.transcript.lines if text.startswith("TLS established")]
    assert len(notes) == 1, result.transcript.lines
    return notes[0]


async def app_token(env: Env, cfg: Config) -> str:
    rt = await runtime_for(cfg)
    try:
        assert (await rt.run_token_probe("app")).success
        tok = rt.providers["app"].current
        assert tok is not None
        return tok.access_token
    finally:
        await rt.stop()


async def imap_target(env: Env) -> tuple[Endpoint, str, tlsresume.ResumingContext, tlsresume.EndpointKey]:
    """The IMAP endpoint, an app token, the endpoint's context and its session key."""
    cfg = env.config(network_checks=False)
    token = await app_token(env, cfg)
    ep = cfg.endpoint_for(cfg.mailboxes[0], "imap")
    ctx = client_context(ep.tls)
    assert isinstance(ctx, tlsresume.ResumingContext)
    return ep, token, ctx, (ep.host, ep.port, server_hostname(ep.tls, ep.host))


def test_second_probe_resumes_and_a_stale_session_is_not_offered(run: Run) -> None:
    run(second_probe_resumes)


async def second_probe_resumes(env: Env) -> None:
    ep, token, ctx, key = await imap_target(env)
    first = await probe_imap(ep, USER, token, 5.0)
    second = await probe_imap(ep, USER, token, 5.0)
    assert first.success and second.success, (first.detail, second.detail)
    assert "TLSv1.3, verified as" in handshake_note(first)
    assert "resumed a session verified as" in handshake_note(second)

    kept = ctx._kept[key]
    verified_at = kept.verified_at
    third = await probe_imap(ep, USER, token, 5.0)
    assert "resumed" in handshake_note(third)
    assert ctx._kept[key].verified_at == verified_at  # a resumed session keeps its verification time

    ctx._kept[key].verified_at -= tlsresume.MAX_AGE + 1  # as if MAX_AGE had passed
    assert ctx.session_for(key) is None
    fourth = await probe_imap(ep, USER, token, 5.0)
    assert "TLSv1.3, verified as" in handshake_note(fourth)  # full handshake, chain verified again
    assert ctx._kept[key].verified_at > verified_at


def test_a_certificate_broken_on_the_server_fails_every_later_probe(run: Run) -> None:
    run(broken_certificate)


async def broken_certificate(env: Env) -> None:
    ep, token, ctx, key = await imap_target(env)
    assert (await probe_imap(ep, USER, token, 5.0)).success
    assert (await probe_imap(ep, USER, token, 5.0)).success
    assert ctx.session_for(key) is not None

    env.state.server_fault("imap").cert = "expired"  # a new server context: the ticket is unknown
    for _ in range(3):
        failed = await probe_imap(ep, USER, token, 5.0)
        assert failed.reason is Reason.TLS_CERT_EXPIRED, (failed.reason, failed.detail)
        assert ctx.session_for(key) is None  # forgotten: nothing resumes past the broken chain
    env.state.server_fault("imap").cert = "server"
    recovered = await probe_imap(ep, USER, token, 5.0)
    assert recovered.success and "verified as" in handshake_note(recovered)
    assert "resumed" not in handshake_note(recovered)


def test_sessions_stay_with_their_endpoint_and_the_tls_check_never_resumes(run: Run) -> None:
    run(per_endpoint)


async def per_endpoint(env: Env) -> None:
    cfg = env.config(network_checks=False)
    token = await app_token(env, cfg)
    mb = cfg.mailboxes[0]
    imap_ep, pop3_ep, smtp_ep = (cfg.endpoint_for(mb, c) for c in ("imap", "pop3", "smtp"))
    assert (await probe_imap(imap_ep, USER, token, 5.0)).success
    pop3 = await probe_pop3(pop3_ep, USER, token, 5.0)
    smtp = await probe_smtp(smtp_ep, USER, token, 5.0)
    assert pop3.success and smtp.success, (pop3.detail, smtp.detail)
    # the first probe of each port verifies its own chain: no session from the IMAP port is offered
    assert "resumed" not in handshake_note(pop3)
    assert "resumed" not in handshake_note(smtp)  # STARTTLS on the same connection, same rules
    assert "resumed" in handshake_note(await probe_smtp(smtp_ep, USER, token, 5.0))
    assert "resumed" in handshake_note(await probe_pop3(pop3_ep, USER, token, 5.0))

    seen: list[bool] = []
    real_wrap = tlsresume.ResumingContext.wrap_bio

    def spy(self: tlsresume.ResumingContext, *args: object, **kwargs: object) -> ssl.SSLObject:
        obj = real_wrap(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(obj.session is not None)
        return obj

    tlsresume.ResumingContext.wrap_bio = spy  # type: ignore[method-assign]
    try:
        check = await probe_endpoint(imap_ep, 5.0)
    finally:
        tlsresume.ResumingContext.wrap_bio = real_wrap  # type: ignore[method-assign]
    assert check.success, check.detail
    assert seen and not any(seen)  # every handshake of the TLS check was a full one
