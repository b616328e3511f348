"""App-registration audit through the simulated Microsoft Graph.

The audit must export exactly the expiries Graph reports (secrets and certificates, keyId as
`key_id`), check the consuming app's redirect URI, fail with `consent_required` when Graph refuses
(Application.Read.All not granted) while the declared expiry keeps being exported, and run as a
Runtime job. The simulated Graph itself is checked for the shapes the audit relies on.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exporter.audit import AUDIT_MIN_INTERVAL, audit_hook, audit_key, parse_graph_time, redirect_matches
from exporter.config import Config
from exporter.reasons import Reason
from exporter.simulator.state import TokenFault
from tests.simenv import APP_ID, CERT_APP_ID, SECRET, Env, env_fixture, runtime_for

ECE_URL = "https://ece.contoso.example"
CALLBACK = f"{ECE_URL}/system/web/view/platform/common/login/oauth2callback"
DECLARED = "2027-03-01T00:00:00+00:00"
EXPIRY = "m365_client_secret_expiry_timestamp_seconds"


env = env_fixture(delegated_login=False)


def audit_config(env: Env, **cred_overrides: dict[str, Any]) -> Config:
    raw = json.loads(env.config().model_dump_json(exclude_none=True))
    raw["defaults"]["https"]["graph_url"] = env.sim.graph_url
    raw["credentials"]["app"]["graph_audit"] = True
    raw["credentials"]["cert"]["graph_audit"] = True
    for name, fields in cred_overrides.items():
        raw["credentials"][name].update(fields)
    return Config.model_validate(raw)


def metric(body: str, line_prefix: str) -> float | None:
    for ln in body.splitlines():
        if ln.startswith(line_prefix + " "):
            return float(ln.rsplit(" ", 1)[1])
    return None


def series(body: str, name: str) -> list[str]:
    return [ln for ln in body.splitlines() if ln.startswith(name + "{")]


async def test_expiries_equal_what_graph_returns(env: Env) -> None:
    rt = await runtime_for(audit_config(env))
    hook = audit_hook(rt)
    assert hook is not None and sorted(hook.enabled()) == ["app", "cert"]
    for name in ("app", "cert"):
        result = await hook.run(rt, name)
        assert result.success, (name, result.reason, result.detail)
    body = rt.renderer.render_sync().decode()
    secret = env.state.apps[APP_ID].password_credentials[0]
    cert = env.state.apps[CERT_APP_ID].key_credentials[0]
    for cred, item in (("app", secret), ("cert", cert)):
        value = metric(body, f'{EXPIRY}{{credential="{cred}",key_id="{item["keyId"]}"}}')
        assert value == parse_graph_time(item["endDateTime"]), (cred, item)
        assert metric(body, f'm365_app_audit_success{{credential="{cred}"}}') == 1.0
    expiries = series(body, "m365_client_secret_expiry_timestamp_seconds")
    own = [x for x in expiries if re.search(r'key_id="[0-9A-F]{40}"', x)]  # cert's file (exporter/certexpiry.py)
    assert len(expiries) - len(own) == 2 and len(own) == 1 and 'credential="cert"' in own[0]
    assert series(body, "m365_app_redirect_uri_match") == []  # no app_external_url configured
    assert SECRET not in body
    # one Graph token per credential, then Graph reads; the token is reused by the next audit
    before = env.state.token_requests(APP_ID)
    assert (await hook.run(rt, "app")).success
    assert env.state.token_requests(APP_ID) == before
    assert env.state.counters[("graph", APP_ID, "ok")] == 2
    await rt.stop()


async def test_every_secret_and_certificate_is_exported(env: Env) -> None:
    app = env.state.apps[APP_ID]
    app.password_credentials.append({"keyId": "old-secret", "displayName": "old",
                                     "endDateTime": "2026-01-02T03:04:05.1234567Z"})
    app.key_credentials.append({"keyId": "a-cert", "type": "AsymmetricX509Cert", "endDateTime": "2030-06-01T00:00:00Z"})
    rt = await runtime_for(audit_config(env))
    assert (await audit_hook(rt).run(rt, "app")).success  # type: ignore[union-attr]
    body = rt.renderer.render_sync().decode()
    keys = {ln.split('key_id="')[1].split('"')[0] for ln in series(body, "m365_client_secret_expiry_timestamp_seconds")
            if 'credential="app"' in ln}
    assert keys == {app.password_credentials[0]["keyId"], "old-secret", "a-cert"}
    assert metric(body, 'm365_client_secret_expiry_timestamp_seconds{credential="app",key_id="old-secret"}') == \
        parse_graph_time("2026-01-02T03:04:05.123456Z")
    await rt.stop()


async def test_graph_denied_fails_with_consent_required_and_declared_expiry_stays(env: Env) -> None:
    env.state.apps[APP_ID].graph_denied = True
    rt = await runtime_for(audit_config(env, app={"secret_expiry": DECLARED}))
    result = await audit_hook(rt).run(rt, "app")  # type: ignore[union-attr]
    assert result.reason is Reason.CONSENT_REQUIRED
    assert "403" in result.detail and "Authorization_RequestDenied" in result.detail
    body = rt.renderer.render_sync().decode()
    assert metric(body, 'm365_app_audit_success{credential="app"}') == 0.0
    assert metric(body, 'm365_app_audit_failure_info{credential="app",reason="consent_required"}') == 1.0
    declared = metric(body, 'm365_client_secret_expiry_timestamp_seconds{credential="app",key_id="declared"}')
    assert declared == parse_graph_time(DECLARED)
    assert [ln for ln in series(body, "m365_client_secret_expiry_timestamp_seconds") if 'credential="app"' in ln] \
        == [ln for ln in series(body, "m365_client_secret_expiry_timestamp_seconds") if 'key_id="declared"' in ln]
    await rt.stop()


async def test_token_without_the_graph_role_is_consent_required(env: Env) -> None:
    env.state.token_faults[APP_ID] = TokenFault(missing_scopes=["Application.Read.All"])
    rt = await runtime_for(audit_config(env))
    result = await audit_hook(rt).run(rt, "app")  # type: ignore[union-attr]
    assert result.reason is Reason.CONSENT_REQUIRED
    assert "no Application.Read.All role" in result.detail
    await rt.stop()


async def test_failed_audit_keeps_last_known_expiries_and_recovers(env: Env) -> None:
    rt = await runtime_for(audit_config(env))
    hook = audit_hook(rt)
    assert hook is not None and (await hook.run(rt, "app")).success
    key_id = env.state.apps[APP_ID].password_credentials[0]["keyId"]
    env.state.apps[APP_ID].graph_denied = True
    assert (await hook.run(rt, "app")).reason is Reason.CONSENT_REQUIRED
    body = rt.renderer.render_sync().decode()
    assert metric(body, f'm365_client_secret_expiry_timestamp_seconds{{credential="app",key_id="{key_id}"}}')
    assert metric(body, 'm365_app_audit_success{credential="app"}') == 0.0
    env.state.apps[APP_ID].graph_denied = False
    assert (await hook.run(rt, "app")).success
    assert metric(rt.renderer.render_sync().decode(), 'm365_app_audit_success{credential="app"}') == 1.0
    await rt.stop()


@pytest.mark.parametrize(("uris", "expected"), [
    ([CALLBACK], 1.0),
    ([f"{ECE_URL}/"], 1.0),
    (["https://ece-old.contoso.example/callback"], 0.0),
    ([f"{ECE_URL}.evil.example/callback"], 0.0),
    ([], 0.0),
])
async def test_redirect_uri_match(env: Env, uris: list[str], expected: float) -> None:
    env.state.apps[APP_ID].redirect_uris = uris
    rt = await runtime_for(audit_config(env, app={"app_external_url": ECE_URL}))
    assert (await audit_hook(rt).run(rt, "app")).success  # type: ignore[union-attr]
    body = rt.renderer.render_sync().decode()
    assert metric(body, 'm365_app_redirect_uri_match{credential="app"}') == expected
    assert series(body, "m365_app_redirect_uri_match") == [
        f'm365_app_redirect_uri_match{{credential="app"}} {expected}']
    await rt.stop()


async def test_audit_runs_as_a_runtime_job(env: Env) -> None:
    env.state.apps[APP_ID].redirect_uris = [CALLBACK]
    cfg = audit_config(env, app={"app_external_url": ECE_URL})
    rt = await runtime_for(cfg)
    assert rt.store.get(audit_key("app")) is not None  # declared by apply(): pending until the first run
    audit_jobs = audit_hook(rt)(rt)  # type: ignore[misc]  # the jobs apply() handed to the scheduler
    assert {j.key for j in audit_jobs} == {audit_key("app"), audit_key("cert")}
    assert all(j.interval == max(cfg.defaults.token_interval, AUDIT_MIN_INTERVAL) for j in audit_jobs)
    job = next(j for j in audit_jobs if j.key == audit_key("app"))
    await rt.scheduler.run_now(job)  # what the scheduler does on the job's slot
    st = rt.store.get(audit_key("app"))
    assert st is not None and st.last is not None and st.last.success
    assert st.last.facts["redirect_uri_match"] == 1.0
    # a reload keeps the auditor (and its Graph token) when nothing it depends on changed
    hook = audit_hook(rt)
    assert hook is not None
    before = env.state.token_requests(APP_ID)
    rt.apply(cfg)
    assert (await hook.run(rt, "app")).success and env.state.token_requests(APP_ID) == before
    # a reload without graph_audit removes the job and its series
    raw = json.loads(cfg.model_dump_json(exclude_none=True))
    raw["credentials"]["app"]["graph_audit"] = False
    raw["credentials"]["cert"]["graph_audit"] = False
    rt.apply(Config.model_validate(raw))
    await rt.scheduler.stop()
    assert rt.store.get(audit_key("app")) is None and hook.enabled() == []
    assert series(rt.renderer.render_sync().decode(), "m365_app_audit_success") == []
    await rt.stop()


async def test_public_client_cannot_be_audited(env: Env) -> None:
    rt = await runtime_for(audit_config(env, delegate={"graph_audit": True}))
    await env.login()
    result = await audit_hook(rt).run(rt, "delegate")  # type: ignore[union-attr]
    assert result.reason is Reason.CREDENTIAL_UNREADABLE and "public client" in result.detail
    await rt.stop()


async def test_simulated_graph_shapes(env: Env) -> None:
    """401 without a valid token, 403 without the role, 404 for an unknown app, $select honoured."""
    base = f"{env.sim.graph_url}/v1.0/applications"
    ssl_ctx = ssl.create_default_context(cafile=str(env.sim.ca_file))
    good = env.sim.minter.mint({**env.sim.minter.app_claims(APP_ID, [], cert=False),
                                "aud": "https://graph.microsoft.com", "roles": ["Application.Read.All"]}, 600)
    no_role = env.sim.minter.mint({**env.sim.minter.app_claims(APP_ID, [], cert=False),
                                   "aud": "https://graph.microsoft.com"}, 600)
    exchange = env.sim.minter.mint(env.sim.minter.app_claims(APP_ID, ["Application.Read.All"], cert=False), 600)
    async with aiohttp.ClientSession() as session:
        async def get(app_id: str, token: str | None, query: str = "") -> tuple[int, dict[str, Any]]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with session.get(f"{base}(appId='{app_id}'){query}", headers=headers, ssl=ssl_ctx) as r:
                return r.status, await r.json()

        status, body = await get(APP_ID, None)
        assert status == 401 and body["error"]["code"] == "InvalidAuthenticationToken"
        assert (await get(APP_ID, exchange))[0] == 401  # wrong audience
        status, body = await get(APP_ID, no_role)
        assert status == 403 and body["error"] == {**body["error"], "code": "Authorization_RequestDenied",
                                                   "message": "Insufficient privileges to complete the operation."}
        status, body = await get("00000000-dead-beef-0000-000000000000", good)
        assert status == 404 and body["error"]["code"] == "Request_ResourceNotFound"
        status, body = await get(APP_ID, good, "?$select=appId,passwordCredentials")
        assert status == 200 and set(body) == {"@odata.context", "appId", "passwordCredentials"}
        assert body["passwordCredentials"][0]["keyId"] == env.state.apps[APP_ID].password_credentials[0]["keyId"]
        status, body = await get(CERT_APP_ID, good)
        assert status == 200 and body["keyCredentials"][0]["type"] == "AsymmetricX509Cert"
        assert body["web"]["redirectUris"] == []
        # admin API: flip graph_denied for the caller
        async with session.post(f"{env.sim.authority_host}/_sim/apps/{APP_ID}", json={"graph_denied": True},
                                ssl=ssl_ctx) as r:
            assert r.status == 200 and (await r.json())["graph_denied"] is True
        assert (await get(CERT_APP_ID, good))[0] == 403


def test_graph_time_and_redirect_helpers() -> None:
    assert parse_graph_time("2026-08-01T10:00:00Z") == parse_graph_time("2026-08-01T10:00:00+00:00")
    assert parse_graph_time("2026-08-01T10:00:00.1234567Z") == pytest.approx(
        parse_graph_time("2026-08-01T10:00:00Z") + 0.123456)  # type: ignore[operator]
    assert parse_graph_time("2026-08-01T10:00:00") == parse_graph_time("2026-08-01T10:00:00Z")
    assert parse_graph_time(None) is None and parse_graph_time("soon") is None
    assert redirect_matches("https://ece.example.com/", ["https://ECE.example.com/callback"])
    assert not redirect_matches("https://ece.example.com", ["https://ece.example.com.evil.net/x"])


async def test_demo_enables_the_audit(tmp_path: Path) -> None:
    from exporter.simulator.demo import Demo

    demo = Demo(tmp_path, interval=15.0)
    cfg = await demo.start()
    try:
        assert cfg.credentials["ece-app"].graph_audit and cfg.credentials["ece-cert"].secret_expiry is not None
        rt = await runtime_for(cfg)
        assert (await audit_hook(rt).run(rt, "ece-app")).success  # type: ignore[union-attr]
        body = rt.renderer.render_sync().decode()
        expiry = metric(body, EXPIRY + '{credential="ece-app",key_id="6a1c0f52-demo-secret"}')
        assert expiry is not None and 20 * 86400 < expiry - time.time() < 22 * 86400  # the warning alert fires
        assert metric(body, 'm365_app_redirect_uri_match{credential="ece-app"}') == 1.0
        assert metric(body, 'm365_client_secret_expiry_timestamp_seconds{credential="ece-cert",key_id="declared"}')
        await rt.stop()
    finally:
        await demo.close()
