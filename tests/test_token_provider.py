"""Token probing with real MSAL against the simulated identity platform over HTTPS.

Each flow (secret, certificate, delegated refresh token), each AADSTS fault mapped to its
reason, recovery right after a fault clears (MSAL's failure cache must not hide it),
Retry-After honoured, single-flight, identity and scope checks, and cache problems.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exporter.auth.provider import TokenProvider
from exporter.reasons import AADSTS_REASONS, Reason
from exporter.simulator.state import TokenFault
from tests.simenv import APP_ID, CERT_APP_ID, DELEGATE, OTHER_USER, PUBLIC_APP_ID, Env, runtime_for, start_env


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await start_env(tmp_path)
    yield e
    await e.sim.close()


def metric_lines(body: bytes, name: str) -> list[str]:
    return [ln for ln in body.decode().splitlines() if ln.startswith(name + "{") or ln.startswith(name + " ")]


async def test_each_flow_gets_a_token_with_identity_and_scopes(env: Env) -> None:
    rt = await runtime_for(env.config())
    for name in ("app", "cert", "delegate"):
        result = await rt.run_token_probe(name)
        assert result.success, (name, result.reason, result.detail)
        assert result.facts["identity_match"] == 1.0
        assert result.facts["token_expiry"] > time.time() + 600
    body = rt.renderer.render_sync()
    assert 'm365_token_refresh_success{credential="cert"} 1.0' in body.decode()
    assert 'm365_token_missing_scope{credential="app",scope="IMAP.AccessAsApp"} 0.0' in body.decode()
    assert 'm365_token_missing_scope{credential="delegate",scope="SMTP.Send"} 0.0' in body.decode()
    assert (f'm365_credential_info{{auth="certificate",client_id="{CERT_APP_ID}",credential="cert",'
            'flow="client_credentials",') in body.decode()
    # the mailbox grid mirrors the credential
    assert 'm365_probe_success{check="token",mailbox="support@contoso.example"} 1.0' in body.decode()
    # the delegated refresh rotated the refresh token and the cache was rewritten, still 0600
    assert (env.files["cache"].stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("code", sorted(AADSTS_REASONS))
async def test_aadsts_fault_maps_to_reason_and_recovers_immediately(env: Env, code: int) -> None:
    cred, client = ("delegate", PUBLIC_APP_ID) if code in (700082, 70008, 50173, 50076, 50079, 70043, 50057, 50055,
                                                          50034, 50020, 7000218) else ("app", APP_ID)
    rt = await runtime_for(env.config())
    env.state.token_faults[client] = TokenFault(aadsts=code)
    failed = await rt.run_token_probe(cred)
    assert not failed.success
    assert failed.reason is AADSTS_REASONS[code], (code, failed.reason, failed.detail)
    assert f"AADSTS{code}" in failed.detail
    body = rt.renderer.render_sync().decode()
    assert f'm365_token_refresh_failure_info{{credential="{cred}",reason="{AADSTS_REASONS[code].value}"}} 1.0' in body
    del env.state.token_faults[client]
    sent = env.state.token_requests(client)
    recovered = await rt.run_token_probe(cred)
    if AADSTS_REASONS[code] is Reason.THROTTLED:
        # throttling is honoured: no new request within the back-off window
        assert recovered.reason is Reason.THROTTLED and env.state.token_requests(client) == sent
        return
    # no waiting for MSAL's 60 s failure cache: the very next token probe shows the recovery
    assert recovered.success, (recovered.reason, recovered.detail)


async def test_throttling_honours_retry_after(env: Env) -> None:
    rt = await runtime_for(env.config())
    env.state.token_faults[APP_ID] = TokenFault(status=429, retry_after=2)
    first = await rt.run_token_probe("app")
    assert first.reason is Reason.THROTTLED
    sent = env.state.token_requests(APP_ID)
    again = await rt.run_token_probe("app")  # inside Retry-After: answered without calling the IdP
    assert again.reason is Reason.THROTTLED
    assert env.state.token_requests(APP_ID) == sent
    del env.state.token_faults[APP_ID]
    await asyncio.sleep(2.1)
    assert (await rt.run_token_probe("app")).success
    assert env.state.token_requests(APP_ID) == sent + 1


async def test_idp_5xx_is_idp_unavailable(env: Env) -> None:
    rt = await runtime_for(env.config())
    env.state.token_faults[APP_ID] = TokenFault(status=503)
    result = await rt.run_token_probe("app")
    assert result.reason is Reason.IDP_UNAVAILABLE


async def test_slow_idp_times_out_with_reason(env: Env) -> None:
    rt = await runtime_for(env.config(timeout=1))
    env.state.token_faults[APP_ID] = TokenFault(delay=3)
    t0 = time.monotonic()
    result = await rt.run_token_probe("app")
    assert result.reason is Reason.TIMEOUT
    assert time.monotonic() - t0 < 2.5


async def test_single_flight_ten_mailboxes_one_request(env: Env) -> None:
    mailboxes = [{"address": f"m{i}@contoso.example", "credential": "app", "checks": ["imap"]} for i in range(10)]
    rt = await runtime_for(env.config(mailboxes=mailboxes))
    provider: TokenProvider = rt.providers["app"]
    env.state.token_faults[APP_ID] = TokenFault(delay=0.3)  # keep the first request in flight
    before = env.state.token_requests(APP_ID)
    tokens = await asyncio.gather(*(provider.get_token() for _ in range(10)), rt.run_token_probe("app"))
    assert env.state.token_requests(APP_ID) - before == 1
    assert len({t.access_token for t in tokens[:10]}) == 1
    assert provider.token_requests == 1
    # cached afterwards: mail probes cost no token request
    await asyncio.gather(*(provider.get_token() for _ in range(10)))
    assert env.state.token_requests(APP_ID) - before == 1


async def test_failures_are_not_retried_by_every_mailbox(env: Env) -> None:
    mailboxes = [{"address": f"m{i}@contoso.example", "credential": "app", "checks": ["imap"]} for i in range(5)]
    rt = await runtime_for(env.config(mailboxes=mailboxes))
    env.state.token_faults[APP_ID] = TokenFault(aadsts=7000222)
    before = env.state.token_requests(APP_ID)
    for _ in range(3):
        results = await asyncio.gather(*(rt.providers["app"].get_token() for _ in range(5)), return_exceptions=True)
        assert all(getattr(r, "reason", None) is Reason.SECRET_EXPIRED for r in results)
    assert env.state.token_requests(APP_ID) - before == 1  # back-off: one request, not 15


async def test_wrong_identity_is_a_failure(env: Env) -> None:
    rt = await runtime_for(env.config())
    env.state.token_faults[PUBLIC_APP_ID] = TokenFault(wrong_user=OTHER_USER)
    result = await rt.run_token_probe("delegate")
    assert result.reason is Reason.WRONG_IDENTITY
    assert OTHER_USER in result.detail and DELEGATE in result.detail
    body = rt.renderer.render_sync().decode()
    assert 'm365_token_identity_match{credential="delegate"} 0.0' in body


async def test_cache_bootstrapped_as_the_wrong_user_is_refused(env: Env) -> None:
    env.files["cache"].unlink()
    await env.login(OTHER_USER)
    rt = await runtime_for(env.config())
    result = await rt.run_token_probe("delegate")
    assert result.reason is Reason.WRONG_IDENTITY


async def test_missing_scope_names_the_scope(env: Env) -> None:
    rt = await runtime_for(env.config())
    env.state.token_faults[APP_ID] = TokenFault(missing_scopes=["POP.AccessAsApp"])
    result = await rt.run_token_probe("app")
    assert result.reason is Reason.MISSING_SCOPE
    assert "POP.AccessAsApp" in result.detail
    body = rt.renderer.render_sync().decode()
    assert 'm365_token_missing_scope{credential="app",scope="POP.AccessAsApp"} 1.0' in body
    assert 'm365_token_missing_scope{credential="app",scope="IMAP.AccessAsApp"} 0.0' in body
    # only the mailbox that needs POP is marked
    assert 'm365_probe_failure_info{check="token",mailbox="sales@contoso.example",reason="missing_scope"} 1.0' in body


async def test_no_cache_and_corrupt_cache(env: Env) -> None:
    env.files["cache"].unlink()
    rt = await runtime_for(env.config())
    assert (await rt.run_token_probe("delegate")).reason is Reason.NO_TOKEN_CACHE
    env.files["cache"].write_text("{broken")
    assert (await rt.run_token_probe("delegate")).reason is Reason.TOKEN_CACHE_CORRUPT
    # `login` again: picked up without a restart
    await env.login()
    assert (await rt.run_token_probe("delegate")).success


async def test_revoked_refresh_token(env: Env) -> None:
    from exporter.simulator.idp import revoke_refresh_tokens

    rt = await runtime_for(env.config())
    assert (await rt.run_token_probe("delegate")).success
    revoke_refresh_tokens(env.state, DELEGATE)
    assert (await rt.run_token_probe("delegate")).reason is Reason.GRANT_REVOKED


async def test_rotated_secret_file_is_picked_up(env: Env) -> None:
    rt = await runtime_for(env.config())
    env.files["secret"].write_text("wrong-secret-value-xyz")
    assert (await rt.run_token_probe("app")).reason is Reason.SECRET_INVALID
    from tests.simenv import SECRET

    env.files["secret"].write_text(SECRET)
    assert (await rt.run_token_probe("app")).success
    env.files["secret"].unlink()
    assert (await rt.run_token_probe("app")).reason is Reason.CREDENTIAL_UNREADABLE


async def test_wrong_certificate_is_certificate_invalid(env: Env) -> None:
    from exporter.simulator.seed import make_app_certificate

    key_pem, cert_pem = make_app_certificate("not the registered one")
    env.files["key"].write_bytes(key_pem)
    env.files["cert"].write_bytes(cert_pem)
    rt = await runtime_for(env.config())
    assert (await rt.run_token_probe("cert")).reason is Reason.CERTIFICATE_INVALID


async def test_ca_bundle_env_cannot_override_configured_ca(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    bogus = tmp_path / "bogus-ca.pem"
    bogus.write_text("not a CA\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bogus))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(bogus))
    rt = await runtime_for(env.config())
    assert (await rt.run_token_probe("app")).success
    # and without the configured CA the simulator is (correctly) untrusted
    cfg = env.config()
    raw = json.loads(cfg.model_dump_json())
    raw["defaults"]["https"]["ca_file"] = None
    from exporter.config import Config

    rt2 = await runtime_for(Config.model_validate(raw))
    assert (await rt2.run_token_probe("app")).reason is Reason.TLS_UNTRUSTED


async def test_unreachable_identity_platform(env: Env) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = env.config()
    raw = json.loads(cfg.model_dump_json())
    raw["defaults"]["https"]["authority_host"] = f"https://127.0.0.1:{port}"
    from exporter.config import Config

    rt = await runtime_for(Config.model_validate(raw))
    assert (await rt.run_token_probe("app")).reason is Reason.CONNECTION_REFUSED
