"""The simulator's identity platform against REAL MSAL over HTTPS.

Why real MSAL: the exporter's token handling is only as right as our picture of what MSAL does
with Microsoft's answers (returned error dicts vs raised exceptions, its HTTP failure cache, token
cache and refresh). These tests pin that picture down against the simulator, which answers in
Microsoft's shapes. MSAL is blocking, so every MSAL call runs in a worker thread
(`asyncio.to_thread`) while the server runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jwt
import msal
import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import load_pem_x509_certificate

from exporter.reasons import AADSTS_REASONS, classify_aadsts
from exporter.simulator.certs import SimCerts, make_certs
from exporter.simulator.idp import AADSTS_ERRORS, IdentityServer
from exporter.simulator.seed import (
    add_app,
    add_mailbox,
    add_user,
    bootstrap_delegated_cache,
    make_app_certificate,
    sim_http_client,
)
from exporter.simulator.state import SimState, TokenFault
from exporter.simulator.tokens import TokenMinter, b64url_decode

T = TypeVar("T")

SECRET_APP = "0d1e5c7a-1111-4000-8000-000000000001"
CERT_APP = "0d1e5c7a-2222-4000-8000-000000000002"
PUBLIC_APP = "0d1e5c7a-3333-4000-8000-000000000003"
SECRET = "Zq8~exampleSecretValue.1234"
SVC = "svc-ece@example.com"
ALICE = "alice@example.com"
EXO = ["https://outlook.office365.com/.default"]
DELEGATED = [
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/POP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
]


def claims_of(token: str) -> dict[str, Any]:
    return json.loads(b64url_decode(token.split(".")[1]))


async def run(fn: Callable[[], T]) -> T:
    """MSAL blocks: run it off the loop that serves the identity platform."""
    return await asyncio.to_thread(fn)


@dataclass
class Idp:
    state: SimState
    server: IdentityServer
    ca_file: Path
    port: int
    http: requests.Session
    http_cache: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def authority(self) -> str:
        return f"{self.base}/{self.state.tenant_id}"

    def cca(self, client_id: str = SECRET_APP, credential: Any = SECRET, **kw: Any) -> Any:
        return msal.ConfidentialClientApplication(
            client_id, client_credential=credential, authority=kw.pop("authority", self.authority),
            instance_discovery=False, http_client=self.http, http_cache=self.http_cache, **kw,
        )

    def pca(self, client_id: str = PUBLIC_APP, **kw: Any) -> Any:
        return msal.PublicClientApplication(
            client_id, authority=self.authority, instance_discovery=False, http_client=self.http,
            http_cache=self.http_cache, **kw,
        )

    def admin(self, method: str, path: str, body: Any = None) -> requests.Response:
        return self.http.request(method, f"{self.base}{path}", json=body)

    def bootstrap(self, cache: Any, upn: str = SVC, client_id: str = PUBLIC_APP) -> dict[str, Any]:
        return bootstrap_delegated_cache(
            self.authority, client_id, upn, DELEGATED, self.state, self.http, cache
        )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> SimCerts:
    return make_certs(tmp_path_factory.mktemp("idp"))


@pytest.fixture(scope="module")
def app_cert() -> tuple[bytes, bytes]:
    return make_app_certificate("ece-app")


@pytest.fixture
async def idp(certs: SimCerts, app_cert: tuple[bytes, bytes]) -> AsyncIterator[Idp]:
    state = SimState()
    add_app(state, SECRET_APP, secret=SECRET)
    add_app(state, CERT_APP, certificate_pem=app_cert[1])
    add_app(state, PUBLIC_APP, public_client=True)
    add_user(state, SVC)
    add_user(state, ALICE)
    add_mailbox(state, "sales@example.com", app_access=[SECRET_APP])
    server = IdentityServer(state, TokenMinter(state.tenant_id), certs)
    port = await server.start("127.0.0.1")
    http = sim_http_client(certs.ca_file, timeout=10)
    try:
        yield Idp(state, server, certs.ca_file, port, http)
    finally:
        http.close()
        await server.close()


async def test_discovery_document_uses_request_host(idp: Idp) -> None:
    resp = await run(lambda: idp.http.get(f"{idp.authority}/v2.0/.well-known/openid-configuration"))
    doc = resp.json()
    assert doc["token_endpoint"] == f"{idp.authority}/oauth2/v2.0/token"
    assert doc["device_authorization_endpoint"] == f"{idp.authority}/oauth2/v2.0/devicecode"
    assert doc["authorization_endpoint"].startswith(idp.authority)


async def test_client_secret_success_and_msal_cache(idp: Idp) -> None:
    app = await run(idp.cca)
    result = await run(lambda: app.acquire_token_for_client(EXO))
    claims = claims_of(result["access_token"])
    assert claims["aud"] == "https://outlook.office365.com"
    assert claims["appid"] == SECRET_APP and claims["appidacr"] == "1" and claims["idtyp"] == "app"
    assert claims["roles"] == ["IMAP.AccessAsApp", "POP.AccessAsApp", "SMTP.SendAsApp"]
    assert result["token_type"] == "Bearer" and result["expires_in"] == 3600
    again = await run(lambda: app.acquire_token_for_client(EXO))
    assert again["token_source"] == "cache"
    assert idp.state.counters[("token", SECRET_APP, "client_credentials")] == 1


async def test_graph_scope_token(idp: Idp) -> None:
    app = await run(idp.cca)
    result = await run(lambda: app.acquire_token_for_client(["https://graph.microsoft.com/.default"]))
    claims = claims_of(result["access_token"])
    assert claims["aud"] == "https://graph.microsoft.com" and claims["roles"] == ["Application.Read.All"]


async def test_wrong_secret_unknown_app_bad_scope_wrong_resource(idp: Idp) -> None:
    bad = await run(lambda: idp.cca(credential="the-secret-id-not-the-value"))
    result = await run(lambda: bad.acquire_token_for_client(EXO))
    assert result["error"] == "invalid_client" and result["error_codes"] == [7000215]
    unknown = await run(lambda: idp.cca(client_id=str(uuid.uuid4())))
    assert (await run(lambda: unknown.acquire_token_for_client(EXO)))["error_codes"] == [700016]
    app = await run(idp.cca)
    scoped = await run(lambda: app.acquire_token_for_client(["https://outlook.office365.com/IMAP.AccessAsApp"]))
    assert scoped["error"] == "invalid_scope" and scoped["error_codes"] == [70011]
    gcc = await run(lambda: app.acquire_token_for_client(["https://outlook.office365.us/.default"]))
    assert gcc["error_codes"] == [500011]


async def test_error_body_is_microsoft_shaped(idp: Idp) -> None:
    idp.state.token_faults[SECRET_APP] = TokenFault(aadsts=7000222)
    resp = await run(lambda: idp.http.post(
        f"{idp.authority}/oauth2/v2.0/token",
        data={"client_id": SECRET_APP, "client_secret": SECRET, "grant_type": "client_credentials",
              "scope": EXO[0]},
        headers={"client-request-id": "5f0c3f4e-0000-4000-8000-00000000abcd"},
    ))
    assert resp.status_code == 401
    body = resp.json()
    assert set(body) == {"error", "error_description", "error_codes", "timestamp", "trace_id",
                         "correlation_id", "error_uri"}
    assert body["error"] == "invalid_client" and body["error_codes"] == [7000222]
    first, trace, corr, stamp = body["error_description"].split("\r\n")
    assert first.startswith(f"AADSTS7000222: The provided client secret keys for app '{SECRET_APP}' are")
    assert trace == f"Trace ID: {body['trace_id']}"
    assert body["correlation_id"] == "5f0c3f4e-0000-4000-8000-00000000abcd"  # echoes client-request-id
    assert corr == f"Correlation ID: {body['correlation_id']}"
    assert stamp == f"Timestamp: {body['timestamp']}" and body["timestamp"].endswith("Z")
    assert body["error_uri"] == "https://login.microsoftonline.com/error?code=7000222"


async def test_every_reason_code_round_trips_through_msal(idp: Idp) -> None:
    app = await run(idp.cca)

    def each() -> dict[int, dict[str, Any]]:
        out = {}
        for code in AADSTS_REASONS:
            idp.state.token_faults[SECRET_APP] = TokenFault(aadsts=code)
            idp.http_cache.clear()  # else MSAL answers identical 400 requests from its cache for 60 s
            out[code] = app.acquire_token_for_client(EXO)
        return out

    results = await run(each)
    for code, result in results.items():
        assert code in AADSTS_ERRORS
        assert result["error_codes"] == [code], code
        assert result["error"] == AADSTS_ERRORS[code].error
        assert result["error_description"].startswith(f"AADSTS{code}: ")
        assert classify_aadsts(result["error"], result["error_codes"]) == AADSTS_REASONS[code]


async def test_msal_caches_identical_400_for_60s(idp: Idp) -> None:
    idp.state.token_faults[SECRET_APP] = TokenFault(aadsts=70011)
    app = await run(idp.cca)
    first = await run(lambda: app.acquire_token_for_client(EXO))
    del idp.state.token_faults[SECRET_APP]
    second = await run(lambda: app.acquire_token_for_client(EXO))
    assert first["error_codes"] == second["error_codes"] == [70011]  # recovery hidden by MSAL's cache
    assert idp.state.token_requests(SECRET_APP) == 1
    idp.http_cache.clear()
    assert "access_token" in await run(lambda: app.acquire_token_for_client(EXO))
    assert idp.state.token_requests(SECRET_APP) == 2


async def test_429_plain_text_raises_and_is_cached_for_retry_after(idp: Idp) -> None:
    idp.state.token_faults[SECRET_APP] = TokenFault(status=429, retry_after=30)
    resp = await run(lambda: idp.http.post(
        f"{idp.authority}/oauth2/v2.0/token",
        data={"client_id": SECRET_APP, "client_secret": SECRET, "grant_type": "client_credentials",
              "scope": EXO[0]},
    ))
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "30"
    assert resp.text == "Too Many Requests"  # like Entra: not OAuth JSON
    app = await run(idp.cca)
    before = idp.state.token_requests(SECRET_APP)
    for _ in range(2):  # MSAL cannot parse the body: JSONDecodeError (a ValueError) escapes MSAL
        with pytest.raises(ValueError):
            await run(lambda: app.acquire_token_for_client(EXO))
    assert idp.state.token_requests(SECRET_APP) == before + 1  # second answer came from MSAL's cache


async def test_429_with_aadsts_returns_error_dict(idp: Idp) -> None:
    idp.state.token_faults[SECRET_APP] = TokenFault(status=429, aadsts=50196, retry_after=60)
    app = await run(idp.cca)
    result = await run(lambda: app.acquire_token_for_client(EXO))
    assert result["error_codes"] == [50196]
    assert classify_aadsts(result["error"], result["error_codes"]).value == "throttled"


async def test_503_raises_msal_service_error(idp: Idp) -> None:
    idp.state.token_faults[SECRET_APP] = TokenFault(status=503, retry_after=2)
    app = await run(idp.cca)
    for _ in range(2):
        with pytest.raises(msal.exceptions.MsalServiceError, match="503"):
            await run(lambda: app.acquire_token_for_client(EXO))
    assert idp.state.token_requests(SECRET_APP) == 1  # cached for Retry-After (default 5 s without it)


async def test_certificate_credential_ps256_and_legacy_sha1(idp: Idp, app_cert: tuple[bytes, bytes]) -> None:
    key_pem, cert_pem = app_cert
    app = await run(lambda: idp.cca(CERT_APP, {"private_key": key_pem.decode(),
                                               "public_certificate": cert_pem.decode()}))
    claims = claims_of((await run(lambda: app.acquire_token_for_client(EXO)))["access_token"])
    assert claims["appid"] == CERT_APP and claims["appidacr"] == "2"
    sha1 = load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA1()).hex()
    legacy = await run(lambda: idp.cca(CERT_APP, {"private_key": key_pem.decode(), "thumbprint": sha1}))
    assert "access_token" in await run(lambda: legacy.acquire_token_for_client(EXO))


async def test_wrong_certificate_and_clock_skew(idp: Idp, app_cert: tuple[bytes, bytes]) -> None:
    other_key, other_cert = make_app_certificate("not-registered")
    wrong = await run(lambda: idp.cca(CERT_APP, {"private_key": other_key.decode(),
                                                 "public_certificate": other_cert.decode()}))
    result = await run(lambda: wrong.acquire_token_for_client(EXO))
    assert result["error"] == "invalid_client" and result["error_codes"] == [700027]

    key_pem, cert_pem = app_cert
    sha256 = load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    x5t = jwt.utils.base64url_encode(sha256).decode()
    now = time.time() - 3600  # this host's clock is an hour behind
    assertion = jwt.encode(
        {"aud": f"{idp.authority}/oauth2/v2.0/token", "iss": CERT_APP, "sub": CERT_APP,
         "jti": str(uuid.uuid4()), "iat": now, "nbf": now, "exp": now + 600},
        key_pem, algorithm="PS256", headers={"x5t#S256": x5t},
    )
    with pytest.warns(DeprecationWarning):  # MSAL discourages static assertions
        skewed = await run(lambda: idp.cca(CERT_APP, {"client_assertion": assertion}))
    result = await run(lambda: skewed.acquire_token_for_client(EXO))
    assert result["error_codes"] == [700024]
    assert classify_aadsts(result["error"], result["error_codes"]).value == "clock_skew"


async def test_device_code_bootstrap_then_refresh(idp: Idp) -> None:
    cache = msal.SerializableTokenCache()
    result = await run(lambda: idp.bootstrap(cache))
    assert result["token_source"] == "identity_provider"
    claims = claims_of(result["access_token"])
    assert claims["upn"] == SVC and claims["aud"] == "https://outlook.office.com"
    assert claims["scp"].split() == ["IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send"]
    assert result["id_token_claims"]["preferred_username"] == SVC
    assert idp.state.counters[("token", PUBLIC_APP, "urn:ietf:params:oauth:grant-type:device_code")] == 1

    app = await run(lambda: idp.pca(token_cache=cache))
    (account,) = app.get_accounts(username=SVC)
    refreshed = await run(lambda: app.acquire_token_silent_with_error(DELEGATED, account, force_refresh=True))
    assert refreshed["token_source"] == "identity_provider"
    assert claims_of(refreshed["access_token"])["upn"] == SVC
    assert idp.state.counters[("token", PUBLIC_APP, "refresh_token")] == 1
    assert len(idp.state.refresh_tokens) == 2  # rotated, and the old one is not revoked (like Entra)


async def test_revoked_and_expired_refresh_tokens(idp: Idp) -> None:
    cache = msal.SerializableTokenCache()
    await run(lambda: idp.bootstrap(cache))
    app = await run(lambda: idp.pca(token_cache=cache))
    (account,) = app.get_accounts(username=SVC)
    revoke = await run(lambda: idp.admin("POST", f"/_sim/users/{SVC}/revoke"))
    assert revoke.json() == {"upn": SVC, "revoked": 1}
    result = await run(lambda: app.acquire_token_silent_with_error(DELEGATED, account, force_refresh=True))
    assert result["error"] == "invalid_grant" and result["error_codes"] == [50173]

    cache2 = msal.SerializableTokenCache()
    await run(lambda: idp.bootstrap(cache2))
    app2 = await run(lambda: idp.pca(token_cache=cache2))
    (account2,) = app2.get_accounts(username=SVC)
    assert (await run(lambda: idp.admin("POST", f"/_sim/users/{SVC}/expire"))).json()["expired"] == 1
    idp.http_cache.clear()
    result = await run(lambda: app2.acquire_token_silent_with_error(DELEGATED, account2, force_refresh=True))
    assert result["error_codes"] == [700082]


async def test_wrong_user_missing_scopes_and_short_lifetime(idp: Idp) -> None:
    fault = TokenFault(wrong_user=ALICE, missing_scopes=["SMTP.Send"], lifetime=120)
    idp.state.token_faults[PUBLIC_APP] = fault
    result = await run(lambda: idp.bootstrap(msal.SerializableTokenCache()))
    claims = claims_of(result["access_token"])
    assert claims["upn"] == ALICE and result["id_token_claims"]["preferred_username"] == ALICE
    assert "SMTP.Send" not in claims["scp"].split() and "IMAP.AccessAsUser.All" in claims["scp"].split()
    assert result["expires_in"] == 120 and claims["exp"] - claims["iat"] == 120

    idp.state.token_faults[SECRET_APP] = TokenFault(missing_scopes=["SMTP.SendAsApp"], lifetime=300)
    app = await run(idp.cca)
    app_result = await run(lambda: app.acquire_token_for_client(EXO))
    assert claims_of(app_result["access_token"])["roles"] == ["IMAP.AccessAsApp", "POP.AccessAsApp"]
    assert app_result["expires_in"] == 300


async def test_unknown_tenant(idp: Idp) -> None:
    # MSAL 1.39 raises ValueError("Unable to get authority configuration ...") at construction; the
    # server's AADSTS90002 text survives only in the chained exception.
    with pytest.raises(ValueError, match="Unable to get authority configuration") as info:
        await run(lambda: idp.cca(authority=f"{idp.base}/{uuid.uuid4()}"))
    assert "AADSTS90002" in str(info.value.__context__)
    resp = await run(lambda: idp.http.post(
        f"{idp.base}/contoso.example/oauth2/v2.0/token",
        data={"client_id": SECRET_APP, "client_secret": SECRET, "grant_type": "client_credentials"},
    ))
    assert resp.status_code == 400 and resp.json()["error_codes"] == [90002]


async def test_public_client_disabled_and_confidential_refresh(idp: Idp) -> None:
    add_app(idp.state, PUBLIC_APP, secret=SECRET, public_client=True)
    cache = msal.SerializableTokenCache()
    await run(lambda: idp.bootstrap(cache))
    idp.state.apps[PUBLIC_APP].public_client = False
    public = await run(lambda: idp.pca(token_cache=cache))
    (account,) = public.get_accounts(username=SVC)
    result = await run(lambda: public.acquire_token_silent_with_error(DELEGATED, account, force_refresh=True))
    assert result["error_codes"] == [7000218]
    assert classify_aadsts(result["error"], result["error_codes"]).value == "public_client_disabled"

    confidential = await run(lambda: idp.cca(PUBLIC_APP, SECRET, token_cache=cache))
    (account,) = confidential.get_accounts(username=SVC)
    ok = await run(lambda: confidential.acquire_token_silent_with_error(DELEGATED, account,
                                                                        force_refresh=True))
    assert claims_of(ok["access_token"])["upn"] == SVC


async def test_device_code_pending_expired_and_disabled_user(idp: Idp) -> None:
    app = await run(idp.pca)
    flow = await run(lambda: app.initiate_device_flow(scopes=DELEGATED))
    assert flow["verification_uri"] == "https://microsoft.com/devicelogin" and flow["expires_in"] == 900
    pending = await run(lambda: app.acquire_token_by_device_flow(dict(flow), exit_condition=lambda _f: True))
    assert pending["error"] == "authorization_pending" and pending["error_codes"] == [70016]
    idp.state.device_codes[flow["device_code"]]["expires"] = 0
    expired = await run(lambda: app.acquire_token_by_device_flow(dict(flow), exit_condition=lambda _f: True))
    assert expired["error"] == "expired_token" and expired["error_codes"] == [70020]

    idp.state.users[SVC].disabled = True
    result = await run(lambda: idp.bootstrap(msal.SerializableTokenCache()))
    assert result["error_codes"] == [50057]


async def test_admin_api(idp: Idp) -> None:
    def calls() -> list[requests.Response]:
        return [
            idp.admin("POST", f"/_sim/faults/token/{SECRET_APP}", {"aadsts": 7000222, "delay": 0.01}),
            idp.admin("POST", "/_sim/faults/server/smtp", {"no_starttls": True}),
            idp.admin("POST", "/_sim/faults/server/smtp", {"delay": 0.5}),
            idp.admin("POST", "/_sim/mailbox/new@example.com",
                      {"full_access": [SVC], "not_accessible": True}),
            idp.admin("POST", "/_sim/tenant", {"smtp_auth_disabled": True}),
            idp.admin("POST", "/_sim/faults/token/x", {"aadsts": "nope"}),
            idp.admin("POST", "/_sim/faults/server/ftp", {}),
        ]

    responses = await run(calls)
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 200, 400, 404]
    state = idp.state
    assert state.token_faults[SECRET_APP] == TokenFault(aadsts=7000222, delay=0.01)
    assert state.server_faults["smtp"].no_starttls and state.server_faults["smtp"].delay == 0.5  # merged
    assert state.mailboxes["new@example.com"].full_access == {SVC}
    assert state.tenant_smtp_auth_disabled

    app = await run(idp.cca)
    assert (await run(lambda: app.acquire_token_for_client(EXO)))["error_codes"] == [7000222]
    stats = (await run(lambda: idp.admin("GET", "/_sim/stats"))).json()
    assert {"key": ["token", SECRET_APP, "client_credentials"], "count": 1} in stats["counters"]

    pca = await run(idp.pca)
    flow = await run(lambda: pca.initiate_device_flow(scopes=DELEGATED))
    approve = await run(lambda: idp.admin("POST", "/_sim/devicecode/approve",
                                          {"user_code": flow["user_code"], "upn": SVC}))
    assert approve.status_code == 200
    token = await run(lambda: pca.acquire_token_by_device_flow(flow, exit_condition=lambda _f: True))
    assert claims_of(token["access_token"])["upn"] == SVC

    assert (await run(lambda: idp.admin("DELETE", f"/_sim/faults/token/{SECRET_APP}"))).json()["deleted"]
    assert (await run(lambda: idp.admin("POST", "/_sim/reset"))).status_code == 200
    assert not state.token_faults and not state.server_faults and not state.counters
    assert not state.tenant_smtp_auth_disabled and not state.mailboxes["new@example.com"].not_accessible


async def test_delay_fault_and_counting_before_faults(idp: Idp) -> None:
    idp.state.token_faults[SECRET_APP] = TokenFault(delay=0.3, status=500)
    app = await run(idp.cca)
    started = time.monotonic()
    with pytest.raises(msal.exceptions.MsalServiceError):
        await run(lambda: app.acquire_token_for_client(EXO))
    assert time.monotonic() - started >= 0.3
    assert idp.state.token_requests() == 1 and idp.state.token_requests(SECRET_APP) == 1


def test_seed_helpers() -> None:
    state = SimState()
    key_pem, cert_pem = make_app_certificate("x", valid_days=-1)
    app = add_app(state, "cid", secret="abcdef", certificate_pem=cert_pem)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert app.password_credentials[0]["hint"] == "abc"
    assert app.key_credentials[0]["type"] == "AsymmetricX509Cert"
    assert app.certificate_thumbprint_sha256 and state.apps["cid"] is app
    mbx = add_mailbox(state, "m@example.com", full_access=["u@example.com"], not_accessible=True)
    assert mbx.full_access == {"u@example.com"} and mbx.not_accessible
    with pytest.raises(TypeError):
        add_mailbox(state, "n@example.com", nonsense=True)
