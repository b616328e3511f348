"""App-registration audit: read the app's secrets, certificates and redirect URIs from Microsoft Graph.

Why: an expiring client secret is the most common way OAuth mail "suddenly" stops, and the token
endpoint only says so once it has expired (AADSTS7000222). Graph knows every secret's and
certificate's `endDateTime` in advance, so the exporter can warn weeks ahead
(`m365_client_secret_expiry_timestamp_seconds{credential,key_id}`, alert
M365ClientSecretExpiringSoon). The same read checks the consuming application's external URL is
among the app's redirect URIs (`m365_app_redirect_uri_match`), a classic break after a
contact-centre server is renamed or moved.

How, and why this way:
- One app-only token per credential for the cloud's Graph resource (`https://graph.microsoft.com/.default`
  worldwide), acquired with the credential's own client secret/certificate (needs the Graph
  application permission Application.Read.All with admin consent). It is a separate MSAL
  application from the token provider's on purpose: the provider force-removes its app tokens
  before every refresh and counts its requests as `m365_token_requests_total`; mixing the Graph
  token in would blur both. The app is built by the same `build_msal_app` rules (no environment
  CA/proxy, configured CA bundle and proxy, a timeout, no instance discovery on custom hosts).
- `defaults.https.graph_url` changes where the Graph request is sent (simulator, a reverse proxy);
  the token is always for the cloud's Graph resource, which is what Graph validates.
- The audit runs as a Runtime `extra_jobs` job every max(token_interval, 1h): secrets change rarely,
  and Graph throttles per app.
- A failed audit keeps exporting the last expiries it read (secrets do not change because Graph
  was unreachable), marked by `m365_app_audit_success 0`; a declared `secret_expiry` is exported
  independently by the runtime, so the expiry alert works without Graph permission.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import msal

from .auth.errors import TokenError, from_exception, from_msal_result, from_observed_exception
from .auth.http import MsalHttpClient
from .auth.provider import build_msal_app, read_client_material
from .config import Config, Credential
from .facts import DISPLAY_NAME, KEY_NAME_PREFIX, KEY_TYPE_PREFIX, REDIRECT_MATCH, REDIRECT_URIS, SECRET_PREFIX
from .probes.result import ProbeResult
from .reasons import Reason
from .redact import redact, register_token
from .scheduler import Job
from .store import Key

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

AUDIT_MIN_INTERVAL = 3600.0
GRAPH_READ_ROLE = "Application.Read.All"
SELECT = "appId,displayName,passwordCredentials,keyCredentials,web,publicClient,spa"

# What `check` says about an audit failure: Graph-specific words for reasons whose catalogue text
# is about token acquisition for mail.
AUDIT_ADVICE: dict[Reason, tuple[str, str]] = {
    Reason.CONSENT_REQUIRED: (
        "Microsoft Graph refused to read the app registration (Application.Read.All not granted)",
        "Grant the app registration the Microsoft Graph application permission Application.Read.All with "
        "admin consent, or declare secret_expiry for this credential in the config (and set graph_audit: "
        "false).",
    ),
    Reason.APP_NOT_FOUND: (
        "Microsoft Graph has no application with this client_id in the tenant",
        "Check client_id and tenant_id; a multi-tenant app is registered in its home tenant only: audit it "
        "there, or set graph_audit: false and declare secret_expiry.",
    ),
    Reason.CREDENTIAL_UNREADABLE: (
        "no client secret or certificate to call Microsoft Graph with",
        "The Graph audit signs in app-only with the credential's own secret or certificate: fix the "
        "configured secret/certificate file, or set graph_audit: false (declare secret_expiry instead).",
    ),
}


def audit_key(name: str) -> Key:
    return ("audit", name, "graph")


def parse_graph_time(value: Any) -> float | None:
    """Graph dateTimeOffset ('2026-08-01T10:00:00Z', up to 7 fractional digits) -> unix time."""
    if not isinstance(value, str) or not value:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def redirect_matches(external_url: str, redirect_uris: list[str]) -> bool:
    """True if a redirect URI is the external URL or lies under it (path prefix, not string prefix:
    https://ece.example.com must not match https://ece.example.com.evil.net)."""
    base = external_url.strip().rstrip("/").lower()
    for uri in redirect_uris:
        u = uri.strip().lower()
        if u.rstrip("/") == base or u.startswith(base + "/") or u.startswith(base + "?"):
            return True
    return False


def application_facts(cred: Credential, data: dict[str, Any]) -> dict[str, float | str]:
    """Facts from Graph's application entity: one expiry per password and key credential."""
    facts: dict[str, float | str] = {}
    if isinstance(data.get("displayName"), str):
        facts[DISPLAY_NAME] = data["displayName"]
    for field, kind in (("passwordCredentials", "secret"), ("keyCredentials", "certificate")):
        items = data.get(field)
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            key_id = str(item.get("keyId") or "").strip()
            expiry = parse_graph_time(item.get("endDateTime"))
            if not key_id or expiry is None:
                continue
            facts[SECRET_PREFIX + key_id] = expiry
            facts[KEY_TYPE_PREFIX + key_id] = kind
            name = item.get("displayName") or item.get("hint")
            if isinstance(name, str) and name:
                facts[KEY_NAME_PREFIX + key_id] = name
    if cred.app_external_url:
        web = data.get("web") if isinstance(data.get("web"), dict) else {}
        uris = [u for u in (web or {}).get("redirectUris") or [] if isinstance(u, str)]
        facts[REDIRECT_MATCH] = 1.0 if redirect_matches(cred.app_external_url, uris) else 0.0
        facts[REDIRECT_URIS] = ", ".join(uris)[:500]
    return facts


class GraphError(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = redact(detail)[:500]


def _graph_failure(status: int, body: Any, token_roles: list[str] | None) -> GraphError:
    err = body.get("error") if isinstance(body, dict) else None
    code = str(err.get("code", "")) if isinstance(err, dict) else ""
    message = str(err.get("message", "")) if isinstance(err, dict) else ""
    detail = f"Graph answered HTTP {status}" + (f" {code}: {message}" if code else "")
    if status in (401, 403):
        if token_roles is not None and GRAPH_READ_ROLE not in token_roles:
            detail += f" (the Graph token has no {GRAPH_READ_ROLE} role)"
        return GraphError(Reason.CONSENT_REQUIRED, detail)
    if status == 404:
        return GraphError(Reason.APP_NOT_FOUND, detail)
    if status == 429:
        return GraphError(Reason.THROTTLED, detail)
    if status >= 500:
        return GraphError(Reason.IDP_UNAVAILABLE, detail)
    return GraphError(Reason.UNKNOWN, detail)


class GraphAuditor:
    """One credential's audit: its own MSAL app for the Graph scope and an HTTP session."""

    def __init__(self, name: str, cred: Credential, config: Config) -> None:
        self.name = name
        self.cred = cred
        cloud = config.cloud_for(cred)
        self.authority = f"{config.authority_host(cred)}/{cred.tenant_id}"
        self.custom_authority = config.authority_host(cred) != cloud.authority_host
        self.scope = f"{cloud.graph_url}/.default"
        app_id = cred.client_id.replace("'", "''")  # OData string literal
        self.url = f"{config.graph_url(cred)}/v1.0/applications(appId='{app_id}')?$select={SELECT}"
        https = config.defaults.https
        self.timeout = config.defaults.timeout
        self.http = MsalHttpClient(https.ca_file, https.proxy, self.timeout,
                                   tuple(config.defaults.dns.resolvers))
        self._http_cache: dict[Any, Any] = {}
        self._app: msal.ClientApplication | None = None
        self._digest: str | None = None
        self._lock = threading.Lock()
        self.last_good: dict[str, float | str] = {}

    @property
    def budget(self) -> float:
        """Token (discovery + request) and the Graph GET, each bounded by the HTTP timeout."""
        return 2 * self.timeout

    def close(self) -> None:
        self.http.close()

    async def audit(self) -> ProbeResult:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.budget):
                data = await asyncio.to_thread(self._fetch_blocking)
        except (GraphError, TokenError) as err:
            return self._failed(err.reason, err.detail, t0)
        except TimeoutError:
            return self._failed(Reason.TIMEOUT, f"no answer from Microsoft Graph within {self.budget:g} s", t0)
        except Exception as exc:  # requests/MSAL raise many types: classify all
            err = from_observed_exception(exc, self.http)
            return self._failed(err.reason, err.detail, t0)
        facts = application_facts(self.cred, data)
        self.last_good = {k: v for k, v in facts.items() if k.startswith(SECRET_PREFIX) or k == REDIRECT_MATCH}
        return ProbeResult.ok(time.monotonic() - t0, **facts)

    def _failed(self, reason: Reason, detail: str, t0: float) -> ProbeResult:
        log.warning("app-registration audit of credential %s failed: %s: %s", self.name, reason.value, detail)
        return ProbeResult.fail(reason, time.monotonic() - t0, detail, **self.last_good)

    def _application(self) -> msal.ClientApplication:
        secret, digest = read_client_material(self.cred)
        if secret is None:
            raise TokenError(Reason.CREDENTIAL_UNREADABLE,
                             "graph_audit needs the credential's client secret or certificate: a public client "
                             "cannot call Microsoft Graph app-only")
        if self._app is not None and digest == self._digest:
            return self._app
        try:
            app = build_msal_app(self.cred.client_id, self.authority, self.http, secret, msal.TokenCache(),
                                 custom_authority=self.custom_authority, http_cache=self._http_cache)
        except ValueError as exc:
            text = str(exc).lower()
            if "private key" in text or "certificate" in text or "pem" in text:
                raise TokenError(Reason.CREDENTIAL_UNREADABLE, "cannot load the certificate/private key") from None
            raise from_exception(exc) from None
        self._app, self._digest = app, digest
        return app

    def _fetch_blocking(self) -> dict[str, Any]:
        with self._lock:
            self._http_cache.clear()  # never let MSAL answer a fixed fault from its failure cache
            self.http.reset_observation()
            app = self._application()
            result = app.acquire_token_for_client(scopes=[self.scope])  # cached until near expiry
            if not result or "access_token" not in result:
                raise from_msal_result(result or {}, self.http.last_status, self.http.last_retry_after)
            from .auth.claims import decode_claims, token_permissions

            register_token(result["access_token"])  # redacted wherever a reply echoes it
            claims = decode_claims(result["access_token"])
            roles = sorted(token_permissions(claims)) if claims else None
            self.http.reset_observation()
            resp = self.http.get(self.url, headers={
                "Authorization": f"Bearer {result['access_token']}",
                "Accept": "application/json",
                "client-request-id": str(uuid.uuid4()),
            })
            try:
                body = resp.json()
            except ValueError:
                body = None
            if resp.status_code != 200:
                if resp.status_code == 401:
                    app.remove_tokens_for_client()  # a rejected token must not be reused for an hour
                raise _graph_failure(resp.status_code, body, roles)
            if not isinstance(body, dict):
                raise GraphError(Reason.UNKNOWN, "Graph answered 200 without a JSON application object")
            return body


class AppRegistrationAudit:
    """The Runtime `extra_jobs` hook: one audit job per credential with `graph_audit: true`.

    Auditors (and their cached Graph token) survive a reload when nothing they depend on changed.
    """

    def __init__(self) -> None:
        self._auditors: dict[str, tuple[object, GraphAuditor]] = {}

    def __call__(self, rt: Runtime) -> list[Job]:
        config = rt.config
        d = config.defaults
        wanted: dict[str, tuple[object, GraphAuditor]] = {}
        jobs: list[Job] = []
        for name, cred in config.credentials.items():
            if not cred.graph_audit:
                continue
            sig: object = (cred, config.authority_host(cred), config.graph_url(cred), d.https, d.timeout)
            old = self._auditors.get(name)
            auditor = old[1] if old is not None and old[0] == sig else GraphAuditor(name, cred, config)
            wanted[name] = (sig, auditor)
            jobs.append(Job(audit_key(name), max(d.token_interval, AUDIT_MIN_INTERVAL), auditor.budget + 1.0,
                            partial(self.run, rt, name), signature=sig))
        for name, (_, auditor) in self._auditors.items():
            if name not in wanted or wanted[name][1] is not auditor:
                auditor.close()
        self._auditors = wanted
        return jobs

    def enabled(self) -> list[str]:
        return list(self._auditors)

    async def run(self, rt: Runtime, name: str) -> ProbeResult:
        """Audit one credential now and record the result (the job, and `check`)."""
        entry = self._auditors.get(name)
        if entry is None:
            return ProbeResult.fail(Reason.UNKNOWN, 0.0, f"graph_audit is not enabled for credential {name}")
        result = await entry[1].audit()
        rt.store.record(audit_key(name), result)
        return result

    def close(self) -> None:
        for _, auditor in self._auditors.values():
            auditor.close()
        self._auditors.clear()


def audit_hook(rt: Runtime) -> AppRegistrationAudit | None:
    """The runtime's audit hook, if registered."""
    return next((h for h in rt.extra_jobs if isinstance(h, AppRegistrationAudit)), None)
