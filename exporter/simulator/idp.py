"""A fake Microsoft identity platform (Entra ID v2.0 endpoints) that real MSAL talks to over HTTPS.

Why a real HTTP server rather than mocking MSAL: the exporter's token handling depends on MSAL
behaviour that only shows against a real endpoint: tenant discovery at construction, the
client-assertion JWT it signs (PS256 + x5t#S256), its HTTP failure cache (identical 400s for 60 s,
429/5xx for Retry-After), what it returns (an error dict) versus raises (5xx, unparsable bodies),
and its token cache with refresh tokens and accounts built from id_token/client_info. Errors are
answered with Microsoft-shaped JSON from aadsts.py.

Served for tenant `state.tenant_id` (any other tenant path answers AADSTS90002):
- GET  /{tenant}/v2.0/.well-known/openid-configuration   (what MSAL's Authority fetches)
- POST /{tenant}/oauth2/v2.0/token       client_credentials | refresh_token | device_code grants
- POST /{tenant}/oauth2/v2.0/devicecode  device authorisation (approve via state or the admin API)
The same app carries the loopback-only `/_sim/...` admin API (admin.py) and, when the Simulator
adds them, the Graph routes (graph.py).

Fault semantics (`state.fault_for(client_id, upn)`): every token request is counted first as
("token", client_id, grant_type), then `delay` sleeps, then `aadsts` answers that error (with
`status` as the HTTP status if also set, and Retry-After if `retry_after` is set), else `status`
answers a bare HTTP error: 429 is plain text "Too Many Requests" like Entra's client-credentials
throttling (so MSAL raises a JSON decoding ValueError), 5xx a JSON temporarily_unavailable /
server_error body (MSAL raises MsalServiceError). `wrong_user`, `missing_scopes` and `lifetime`
shape the issued tokens.

MSAL is blocking: run it in another thread than the one whose event loop serves this app
(`await asyncio.to_thread(...)` in tests), or the call deadlocks against its own server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .aadsts import AADSTS_ERRORS, EXCHANGE_APP_ID, AadError, error_body, ms_time
from .admin import (
    add_admin_routes,
    approve_device_code,
    expire_refresh_tokens,
    reset_faults,
    revoke_refresh_tokens,
)
from .certs import SimCerts
from .state import SimApp, SimState, TokenFault, find_user
from .tokens import TokenMinter, b64url, b64url_decode

# Public names of this module before aadsts.py and admin.py were split off, re-exported so importers need no change.
__all__ = [
    "AADSTS_ERRORS",
    "AadError",
    "IdentityServer",
    "approve_device_code",
    "error_body",
    "expire_refresh_tokens",
    "find_user",
    "reset_faults",
    "revoke_refresh_tokens",
]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE_RESOURCES = ("https://outlook.office365.com", "https://outlook.office.com", EXCHANGE_APP_ID)
GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ROLES = ["Application.Read.All"]
DELEGATED_SCOPES = ("IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send")
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
CLOCK_SKEW_SECONDS = 300  # Entra tolerates about five minutes of client-assertion clock skew
MAX_FAULT_DELAY = 300.0  # a delay fault never holds a request longer than this
DEVICE_CODE_LIFETIME = 900
DEVICE_CODE_INTERVAL = 1  # Entra says 5; 1 keeps tests fast and MSAL honours whatever we send
VERIFICATION_URI = "https://microsoft.com/devicelogin"
MAX_DEVICE_CODES = 1000  # pending codes kept; the oldest are dropped beyond this


def _basic_auth(request: web.Request) -> tuple[str | None, str | None]:
    """client_id/client_secret from HTTP Basic (RFC 6749 2.3.1); MSAL posts them in the body instead."""
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None, None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = raw.partition(":")
    return (unquote(user.replace("+", " ")), unquote(password.replace("+", " "))) if sep else (None, None)


def _cert_thumbprints(cert: x509.Certificate) -> tuple[bytes, bytes]:
    return cert.fingerprint(hashes.SHA256()), cert.fingerprint(hashes.SHA1())  # x5t is SHA-1 by definition


class _ScopeError(Exception):
    """An invalid scope parameter: the AADSTS code to answer and its description context."""

    def __init__(self, code: int, **ctx: str) -> None:
        super().__init__(code)
        self.code = code
        self.ctx = ctx


def _user_code() -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(9))


class IdentityServer:
    """The HTTPS identity platform. Routes are added in __init__ so others can extend `app` before start."""

    def __init__(self, state: SimState, minter: TokenMinter, certs: SimCerts) -> None:
        self.state = state
        self.minter = minter
        self.certs = certs
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        r = self.app.router
        r.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid_configuration)
        r.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        r.add_post("/{tenant}/oauth2/v2.0/devicecode", self._devicecode)
        add_admin_routes(self.app, state)

    async def start(self, host: str, port: int = 0) -> int:
        """Serve HTTPS on host:port (0 = ephemeral); returns the bound port."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.certs.server_context())
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- helpers --------------------------------------------------------------------------

    def _tenant_ok(self, tenant: str) -> bool:
        return tenant.lower() == self.state.tenant_id.lower()

    @staticmethod
    def _base_url(request: web.Request) -> str:
        return f"https://{request.host}"

    def _error(
        self,
        request: web.Request,
        code: int,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        error: str | None = None,
        **ctx: Any,
    ) -> web.Response:
        ctx.setdefault("tenant", request.match_info.get("tenant", self.state.tenant_id))
        spec_status, body = error_body(
            code, error=error, correlation_id=request.headers.get("client-request-id"), **ctx
        )
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return web.json_response(body, status=status or spec_status, headers=headers)

    def _status_fault(self, request: web.Request, status: int, retry_after: int | None) -> web.Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        if status == 429:
            # What Entra sends when it throttles client credentials: a bare text body, not OAuth JSON.
            return web.Response(
                status=429, text="Too Many Requests", content_type="text/plain", headers=headers
            )
        if status >= 500:
            error = "temporarily_unavailable" if status == 503 else "server_error"
            return self._error(request, 90033, status=status, retry_after=retry_after, error=error)
        return self._error(request, 9002313, status=status, retry_after=retry_after)

    @staticmethod
    def _parse_scopes(scope: str) -> tuple[str, list[str]]:
        """Delegated scopes -> (resource, short names); raises _ScopeError when Entra would refuse them."""
        resource: str | None = None
        names: list[str] = []
        for item in scope.split():
            if item in RESERVED_SCOPES:
                continue
            res, _, name = item.rpartition("/")
            res_l = res.lower().rstrip("/")
            if res_l in EXCHANGE_RESOURCES:
                this = "https://outlook.office.com" if res_l != EXCHANGE_APP_ID else EXCHANGE_APP_ID
                if name == ".default":
                    picked = list(DELEGATED_SCOPES)
                else:
                    known = {s.lower(): s for s in DELEGATED_SCOPES}
                    if name.lower() not in known:
                        raise _ScopeError(70011, scope=item)
                    picked = [known[name.lower()]]
            elif res_l in ("", GRAPH_RESOURCE):
                # A bare name is a Microsoft Graph scope: Graph also has IMAP.AccessAsUser.All, and a Graph
                # token (aud graph.microsoft.com) is a classic reason for IMAP/SMTP to refuse the login.
                this, picked = GRAPH_RESOURCE, [name]
            else:
                raise _ScopeError(500011, resource=res, scope=item)
            if resource is not None and resource != this:
                raise _ScopeError(70011, scope=scope)
            resource = this
            names += [p for p in picked if p not in names]
        if resource is None:
            raise _ScopeError(70011, scope=scope or "(none)")
        return resource, names

    # -- discovery ------------------------------------------------------------------------

    async def _openid_configuration(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if not self._tenant_ok(tenant):
            # Like Entra for an unknown tenant; MSAL raises ValueError("... AADSTS90002 ...") at construction.
            return self._error(request, 90002, error="invalid_tenant", tenant=tenant)
        base = f"{self._base_url(request)}/{self.state.tenant_id}"
        return web.json_response({
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post", "private_key_jwt", "client_secret_basic",
            ],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce",
                                 "preferred_username", "name", "tid", "ver", "oid"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        })

    # -- token endpoint -------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        basic_id, basic_secret = _basic_auth(request)
        client_id = form.get("client_id") or basic_id or ""
        grant = form.get("grant_type", "")
        self.state.count("token", client_id, grant)
        tenant = request.match_info["tenant"]
        if not self._tenant_ok(tenant):
            return self._error(request, 90002, tenant=tenant, client_id=client_id)

        upn = self._subject_of(grant, form)
        fault = self.state.fault_for(client_id, upn)
        if fault.delay > 0:
            await asyncio.sleep(min(fault.delay, MAX_FAULT_DELAY))
        if fault.aadsts is not None:
            app = self.state.apps.get(client_id)
            return self._error(
                request, fault.aadsts, status=fault.status, retry_after=fault.retry_after,
                client_id=client_id, upn=upn or "unknown", scope=form.get("scope", ""),
                app_name=app.display_name if app else "unknown",
            )
        if fault.html:  # what a captive portal or TLS-inspecting proxy sends instead of Entra's JSON
            return web.Response(status=200, text="<html><body><h1>Sign in to continue</h1></body></html>",
                                content_type="text/html")
        if fault.status is not None:
            return self._status_fault(request, fault.status, fault.retry_after)

        if not client_id:
            return self._error(request, 900144, parameter="client_id")
        if not grant:
            return self._error(request, 900144, parameter="grant_type", client_id=client_id)
        app = self.state.apps.get(client_id)
        if app is None:
            return self._error(request, 700016, client_id=client_id)
        auth = self._authenticate(request, app, form, basic_secret)
        if isinstance(auth, web.Response):
            return auth
        if grant == "client_credentials":
            return self._client_credentials(request, app, form, auth, fault)
        if grant == "refresh_token":
            return self._refresh(request, app, form, auth, fault)
        if grant == DEVICE_CODE_GRANT:
            return self._device_code(request, app, form, auth, fault)
        return self._error(request, 70003, grant_type=grant, client_id=client_id)

    def _subject_of(self, grant: str, form: dict[str, str]) -> str | None:
        """The user a delegated request is about (for user-keyed faults), if known before validation."""
        with self.state.lock:
            if grant == "refresh_token":
                entry = self.state.refresh_tokens.get(form.get("refresh_token", ""))
                return entry[1] if entry else None
            if grant == DEVICE_CODE_GRANT:
                dc = self.state.device_codes.get(form.get("device_code", ""))
                return dc.get("user") if dc else None
        return None

    def _authenticate(
        self, request: web.Request, app: SimApp, form: dict[str, str], basic_secret: str | None
    ) -> web.Response | str:
        """'cert', 'secret' or 'none' (public client), or the error answer."""
        assertion = form.get("client_assertion")
        if assertion:
            if form.get("client_assertion_type") != JWT_BEARER_ASSERTION:
                return self._error(request, 9002313, client_id=app.client_id)
            problem = self._check_assertion(request, app, assertion)
            if problem is not None:
                code, ctx = problem
                return self._error(request, code, client_id=app.client_id, **ctx)
            return "cert"
        secret = form.get("client_secret") or basic_secret
        if secret:
            if not app.secret or not hmac.compare_digest(secret.encode(), app.secret.encode()):
                return self._error(request, 7000215, client_id=app.client_id)
            return "secret"
        return "none"

    def _check_assertion(
        self, request: web.Request, app: SimApp, assertion: str
    ) -> tuple[int, dict[str, str]] | None:
        """Verify a private_key_jwt client assertion like Entra: key registered, signature, time, audience."""
        try:
            head_b64, body_b64, sig_b64 = assertion.split(".")
            header = json.loads(b64url_decode(head_b64))
            claims = json.loads(b64url_decode(body_b64))
            signature = b64url_decode(sig_b64)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return 50027, {}
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return 50027, {}

        presented = str(header.get("x5t#S256") or header.get("x5t") or "")
        try:
            presented_hex = b64url_decode(presented).hex().upper() if presented else "(none)"
        except (ValueError, binascii.Error):
            presented_hex = "(invalid)"
        not_registered = (
            "The certificate with identifier used to sign the client assertion is not registered on "
            "application. [Reason - The key was not found., Thumbprint of key used by client: "
            f"'{presented_hex}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to "
            f"see configured keys for app Id '{app.client_id}'.]"
        )
        cert: x509.Certificate | None = None
        if app.certificate_pem:
            try:
                cert = x509.load_pem_x509_certificate(app.certificate_pem)
            except ValueError:
                cert = None
        if cert is None:
            return 700027, {"detail": not_registered}
        sha256_tp, sha1_tp = _cert_thumbprints(cert)
        try:
            matches = (
                ("x5t#S256" in header and b64url_decode(str(header["x5t#S256"])) == sha256_tp)
                or ("x5t" in header and b64url_decode(str(header["x5t"])) == sha1_tp)
            )
        except (ValueError, binascii.Error):
            matches = False
        if not matches:
            return 700027, {"detail": not_registered}

        alg = header.get("alg")
        pad: padding.AsymmetricPadding
        if alg == "PS256":
            pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
        elif alg == "RS256":
            pad = padding.PKCS1v15()
        else:
            return 700027, {"detail": f"Client assertion contains an invalid signature algorithm '{alg}'."}
        public_key = cert.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            return 700027, {"detail": "Client assertion failed signature validation."}
        try:
            public_key.verify(signature, f"{head_b64}.{body_b64}".encode(), pad, hashes.SHA256())
        except InvalidSignature:
            return 700027, {"detail": "Client assertion failed signature validation."}

        now = time.time()
        exp = claims.get("exp")
        nbf = claims.get("nbf", claims.get("iat"))
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            return 50027, {}
        if exp < now - CLOCK_SKEW_SECONDS or (
            isinstance(nbf, int | float) and not isinstance(nbf, bool) and nbf > now + CLOCK_SKEW_SECONDS
        ):
            return 700024, {
                "now": ms_time(now),
                "nbf": ms_time(float(nbf)) if isinstance(nbf, int | float) else "unknown",
                "exp": ms_time(float(exp)),
            }
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            return 700027, {"detail": "Client assertion issuer and subject must be the app's client_id."}
        aud_path = urlsplit(str(claims.get("aud", ""))).path.rstrip("/").lower()
        tid = self.state.tenant_id.lower()
        if aud_path not in (f"/{tid}/oauth2/v2.0/token", f"/{tid}/oauth2/token", f"/{tid}/v2.0"):
            return 700027, {"detail": "Client assertion audience claim does not match Realm issuer."}
        return None

    def _client_credentials(
        self, request: web.Request, app: SimApp, form: dict[str, str], auth: str, fault: TokenFault
    ) -> web.Response:
        if auth == "none":
            return self._error(request, 7000218, client_id=app.client_id)
        raw_scope = form.get("scope", "")
        scopes = [s for s in raw_scope.split() if s not in RESERVED_SCOPES]
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return self._error(request, 70011, client_id=app.client_id, scope=raw_scope or "(none)")
        resource = scopes[0][: -len("/.default")].rstrip("/")
        claims = self.minter.app_claims(app.client_id, [], cert=auth == "cert")
        if resource.lower() in EXCHANGE_RESOURCES:
            claims["roles"] = [r for r in app.roles if r not in fault.missing_scopes]
        elif resource.lower() == GRAPH_RESOURCE:
            claims["aud"] = GRAPH_RESOURCE
            claims["roles"] = [r for r in GRAPH_APP_ROLES if r not in fault.missing_scopes]
        else:
            return self._error(request, 500011, client_id=app.client_id, resource=resource, scope=raw_scope)
        lifetime = fault.lifetime or self.state.token_lifetime
        return web.json_response({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self.minter.mint(claims, lifetime),
        })

    def _refresh(
        self, request: web.Request, app: SimApp, form: dict[str, str], auth: str, fault: TokenFault
    ) -> web.Response:
        rt = form.get("refresh_token", "")
        if not rt:
            return self._error(request, 900144, parameter="refresh_token", client_id=app.client_id)
        with self.state.lock:
            expired = rt in self.state.expired_refresh_tokens
            entry = self.state.refresh_tokens.get(rt)
        if auth == "none" and not app.public_client:
            return self._error(request, 7000218, client_id=app.client_id)
        if expired:
            return self._error(request, 700082, client_id=app.client_id)
        if entry is None:
            return self._error(request, 50173, client_id=app.client_id)
        rt_client, upn, rt_scopes = entry
        if rt_client != app.client_id:
            return self._error(request, 70000, client_id=app.client_id)
        resource: str = "https://outlook.office.com"
        names = list(rt_scopes)
        if any(s not in RESERVED_SCOPES for s in form.get("scope", "").split()):
            try:
                resource, names = self._parse_scopes(form.get("scope", ""))
            except _ScopeError as exc:
                return self._error(request, exc.code, client_id=app.client_id, **exc.ctx)
        # Entra does not revoke the used refresh token: the old one stays valid and a new one is issued.
        return self._issue_delegated(request, app, upn, resource, names, fault, form)

    def _device_code(
        self, request: web.Request, app: SimApp, form: dict[str, str], auth: str, fault: TokenFault
    ) -> web.Response:
        dc = form.get("device_code", "")
        with self.state.lock:
            entry = self.state.device_codes.get(dc)
            entry = dict(entry) if entry else None
        if auth == "none" and not app.public_client:
            return self._error(request, 7000218, client_id=app.client_id)
        if entry is None or entry.get("client_id") != app.client_id:
            return self._error(request, 9002313, client_id=app.client_id)
        if time.time() > float(entry.get("expires", 0)):
            return self._error(request, 70020, client_id=app.client_id)
        if not entry.get("user"):
            return self._error(request, 70016, client_id=app.client_id)
        with self.state.lock:
            self.state.device_codes.pop(dc, None)  # a device code is redeemed once
        return self._issue_delegated(
            request, app, str(entry["user"]), str(entry.get("resource", "https://outlook.office.com")),
            list(entry.get("scopes", [])), fault, form,
        )

    def _issue_delegated(
        self,
        request: web.Request,
        app: SimApp,
        upn: str,
        resource: str,
        names: list[str],
        fault: TokenFault,
        form: dict[str, str],
    ) -> web.Response:
        user = find_user(self.state, upn)
        if user is None:
            return self._error(request, 50034, client_id=app.client_id, upn=upn)
        if user.disabled:
            return self._error(request, 50057, client_id=app.client_id, upn=upn)
        subject = fault.wrong_user or user.upn  # wrong_user: "signed in as someone else" in the browser
        granted = [n for n in names if n not in fault.missing_scopes]
        lifetime = fault.lifetime or self.state.token_lifetime
        tid = self.state.tenant_id
        claims = self.minter.delegated_claims(subject, app.client_id, granted)
        if resource == GRAPH_RESOURCE:
            claims["aud"] = GRAPH_RESOURCE
        oid = str(claims["oid"])
        id_claims: dict[str, Any] = {
            "aud": app.client_id,
            "iss": f"{self._base_url(request)}/{tid}/v2.0",
            "ver": "2.0",
            "tid": tid,
            "oid": oid,
            "sub": b64url(hashlib.sha256(f"{oid}:{app.client_id}".encode()).digest())[:43],
            "preferred_username": subject,
            "name": subject.split("@")[0],
        }
        if form.get("nonce"):
            id_claims["nonce"] = form["nonce"]
        new_rt = "1.AQ" + secrets.token_urlsafe(96)
        with self.state.lock:
            self.state.refresh_tokens[new_rt] = (app.client_id, subject, list(names))
        prefix = "" if resource == GRAPH_RESOURCE else f"{resource}/"
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(f"{prefix}{n}" for n in granted),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self.minter.mint(claims, lifetime),
            "refresh_token": new_rt,
            "id_token": self.minter.mint(id_claims, lifetime),
        }
        if form.get("client_info") == "1":
            body["client_info"] = b64url(json.dumps({"uid": oid, "utid": tid}).encode())
        return web.json_response(body)

    # -- device authorisation -------------------------------------------------------------

    async def _devicecode(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        client_id = form.get("client_id", "")
        self.state.count("devicecode", client_id)
        tenant = request.match_info["tenant"]
        if not self._tenant_ok(tenant):
            return self._error(request, 90002, tenant=tenant, client_id=client_id)
        if not client_id:
            return self._error(request, 900144, parameter="client_id")
        if client_id not in self.state.apps:
            return self._error(request, 700016, client_id=client_id)
        dc_status = self.state.fault_for(client_id).devicecode_status
        if dc_status is not None:  # e.g. a 503 from a front end: plain text, no OAuth JSON
            return web.Response(status=dc_status, text="Service Unavailable", content_type="text/plain")
        try:
            resource, names = self._parse_scopes(form.get("scope", ""))
        except _ScopeError as exc:
            return self._error(request, exc.code, client_id=client_id, **exc.ctx)
        device_code = "DAQABIQEAAAB" + secrets.token_urlsafe(96)
        user_code = _user_code()
        now = time.time()
        with self.state.lock:
            codes = self.state.device_codes
            for stale in [k for k, v in codes.items() if float(v.get("expires", 0)) < now - 60]:
                del codes[stale]
            while len(codes) >= MAX_DEVICE_CODES:
                del codes[next(iter(codes))]
            codes[device_code] = {
                "client_id": client_id, "scopes": names, "resource": resource, "user": None,
                "expires": now + DEVICE_CODE_LIFETIME, "user_code": user_code,
            }
        return web.json_response({
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": VERIFICATION_URI,
            "expires_in": DEVICE_CODE_LIFETIME,
            "interval": DEVICE_CODE_INTERVAL,
            "message": f"To sign in, use a web browser to open the page {VERIFICATION_URI} and enter the "
            f"code {user_code} to authenticate.",
        })
