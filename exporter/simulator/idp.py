"""A fake Microsoft identity platform (Entra ID v2.0 endpoints) that real MSAL talks to over HTTPS.

Why a real HTTP server rather than mocking MSAL: the exporter's token handling depends on MSAL
behaviour that only shows against a real endpoint: tenant discovery at construction, the
client-assertion JWT it signs (PS256 + x5t#S256), its HTTP failure cache (identical 400s for 60 s,
429/5xx for Retry-After), what it returns (an error dict) versus raises (5xx, unparsable bodies),
and its token cache with refresh tokens and accounts built from id_token/client_info. Answering
with Microsoft-shaped JSON (AADSTS codes, trace/correlation ids, error_uri) lets the exporter's
failure taxonomy (`exporter.reasons`) be tested against the same shapes Microsoft sends.

Served for tenant `state.tenant_id` (any other tenant path answers AADSTS90002):
- GET  /{tenant}/v2.0/.well-known/openid-configuration   (what MSAL's Authority fetches)
- POST /{tenant}/oauth2/v2.0/token       client_credentials | refresh_token | device_code grants
- POST /{tenant}/oauth2/v2.0/devicecode  device authorisation (approve via state or the admin API)

Admin API for tests and the demo (JSON, loopback clients only), all under `/_sim/`:
- POST   /_sim/faults/token/{key}        body = TokenFault fields; replaces the fault for a client_id or UPN
- DELETE /_sim/faults/token/{key}
- POST   /_sim/faults/server/{protocol}  body = ServerFault fields to merge (imap | pop3 | smtp)
- POST   /_sim/mailbox/{address}         body = SimMailbox fields to merge (created if missing)
- POST   /_sim/users/{upn}               body = SimUser fields to merge (created if missing)
- POST   /_sim/users/{upn}/revoke        revoke the user's refresh tokens (AADSTS50173 afterwards)
- POST   /_sim/users/{upn}/expire        lapse the user's refresh tokens (AADSTS700082 afterwards)
- POST   /_sim/tenant                    {"smtp_auth_disabled": bool, "token_lifetime": int}
- POST   /_sim/devicecode/approve        {"user_code": ..., "upn": ...}
- GET    /_sim/stats                     {"counters": [{"key": [...], "count": n}, ...]}
- POST   /_sim/reset                     clear faults (token, server, tenant, mailbox switches) and counters

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
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .certs import SimCerts
from .state import ServerFault, SimApp, SimMailbox, SimState, SimUser, TokenFault
from .tokens import TokenMinter, b64url, b64url_decode

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"  # Office 365 Exchange Online's appId
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
ADMIN_PREFIX = "/_sim/"


@dataclass(frozen=True)
class AadError:
    """How the identity platform answers one AADSTS code: HTTP status, OAuth error, description."""

    status: int
    error: str
    text: str  # str.format_map template; fields come from the request context (see _CTX_DEFAULTS)
    suberror: str | None = None


# AADSTS code -> answer. Texts follow Microsoft's (reference-error-codes, observed responses).
# Deliberate choice, from observed responses: the token endpoint reports MFA, sign-in frequency
# and Conditional Access as `invalid_grant` with a `suberror` (the `interaction_required` error
# is the /authorize endpoint's); MSAL turns the suberror into result["classification"].
AADSTS_ERRORS: dict[int, AadError] = {
    7000215: AadError(401, "invalid_client",
        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
        "value, not the client secret ID, for a secret added to app '{client_id}'."),
    7000222: AadError(401, "invalid_client",
        "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to "
        "create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate "
        "credentials for added security: https://aka.ms/certCreds."),
    700027: AadError(401, "invalid_client", "{detail}"),
    700024: AadError(401, "invalid_client",
        "Client assertion is not within its valid time range. Current time: {now}, assertion valid from "
        "{nbf}, expiry time of assertion {exp}. Review the documentation at "
        "https://learn.microsoft.com/entra/identity-platform/certificate-credentials ."),
    7000218: AadError(401, "invalid_client",
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."),
    700016: AadError(400, "unauthorized_client",
        "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can "
        "happen if the application has not been installed by the administrator of the tenant or consented "
        "to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
    65001: AadError(400, "invalid_grant",
        "The user or administrator has not consented to use the application with ID '{client_id}' named "
        "'{app_name}'. Send an interactive authorization request for this user and resource.",
        "consent_required"),
    700082: AadError(400, "invalid_grant",
        "The refresh token has expired due to inactivity. The token was issued on {issued} and was inactive "
        "for 90.00:00:00."),
    70008: AadError(400, "invalid_grant",
        "The provided authorization code or refresh token has expired due to inactivity. Send a new "
        "interactive authorization request for this user and resource."),
    50173: AadError(400, "invalid_grant",
        "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user "
        "might have changed or reset their password. The grant was issued on '{issued}' and the "
        "TokensValidFrom date (before which tokens are not valid) for this user is '{now}'."),
    50076: AadError(400, "invalid_grant",
        "Due to a configuration change made by your administrator, or because you moved to a new location, "
        "you must use multi-factor authentication to access '{resource_app}'.", "basic_action"),
    50079: AadError(400, "invalid_grant",
        "Due to a configuration change made by your administrator, or because you moved to a new location, "
        "you must enroll in multi-factor authentication to access '{resource_app}'.", "basic_action"),
    70043: AadError(400, "invalid_grant",
        "The refresh token has expired or is invalid due to sign-in frequency checks by conditional access. "
        "The token was issued on {issued} and the maximum allowed lifetime for this request is 3600.",
        "basic_action"),
    53003: AadError(400, "invalid_grant",
        "Access has been blocked by Conditional Access policies. The access policy does not allow token "
        "issuance.", "message_only"),
    530035: AadError(400, "invalid_grant",
        "Access has been blocked by security defaults. This is due to the request using legacy auth or being "
        "deemed unsafe by security defaults policies.", "message_only"),
    50057: AadError(400, "invalid_grant", "The user account is disabled."),
    50055: AadError(400, "invalid_grant", "The password is expired.", "user_password_expired"),
    50126: AadError(400, "invalid_grant",
        "Error validating credentials due to invalid username or password."),
    50034: AadError(400, "invalid_grant",
        "The user account {upn} does not exist in the {tenant} directory. To sign into this application, the "
        "account must be added to the directory."),
    50020: AadError(400, "invalid_grant",
        "User account '{upn}' from identity provider 'live.com' does not exist in tenant '{tenant}' and "
        "cannot access the application '{client_id}'({app_name}) in that tenant. The account needs to be "
        "added as an external user in the tenant first. Sign out and sign in again with a different Azure "
        "Active Directory user account."),
    90002: AadError(400, "invalid_request",
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into "
        "the correct cloud. Check with your subscription administrator, this may happen if there are no "
        "active subscriptions for the tenant."),
    500011: AadError(400, "invalid_resource",
        "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen "
        "if the application has not been installed by the administrator of the tenant or consented to by any "
        "user in the tenant. You might have sent your authentication request to the wrong tenant."),
    70011: AadError(400, "invalid_scope",
        "The provided request must include a 'scope' input parameter. The provided value for the input "
        "parameter 'scope' is not valid. The scope {scope} is not valid."),
    50196: AadError(400, "invalid_grant",
        "The server terminated an operation because it encountered a client request loop. Please contact "
        "your app vendor."),
    # Not failure reasons of the exporter, but part of the protocol the simulator speaks:
    70016: AadError(400, "authorization_pending", "OAuth 2.0 device flow error. Authorization is pending. "
        "Continue polling."),
    70020: AadError(400, "expired_token", "The provided value for the input parameter 'device_code' is not "
        "valid. This device code has expired."),
    70000: AadError(400, "invalid_grant", "The provided value for the input parameter 'refresh_token' or "
        "'assertion' is not valid."),
    70003: AadError(400, "unsupported_grant_type", "The app requested an unsupported grant type "
        "'{grant_type}'."),
    900144: AadError(400, "invalid_request", "The request body must contain the following parameter: "
        "'{parameter}'."),
    9002313: AadError(400, "invalid_request", "Invalid request. Request is malformed or invalid."),
    50027: AadError(400, "invalid_request", "JWT token is invalid or malformed."),
    90033: AadError(503, "temporarily_unavailable", "A transient error has occurred. Please try again."),
}

_CTX_DEFAULTS = {
    "client_id": "00000000-0000-0000-0000-000000000000",
    "tenant": "unknown",
    "upn": "unknown",
    "scope": "(none)",
    "resource": "(none)",
    "resource_app": EXCHANGE_APP_ID,
    "app_name": "ECE mail app",
    "grant_type": "",
    "parameter": "grant_type",
    "detail": "Client assertion failed signature validation.",
    "nbf": "unknown",
    "exp": "unknown",
}


class _Ctx(dict[str, Any]):
    """format_map context: unknown placeholders get plausible defaults instead of raising."""

    def __missing__(self, key: str) -> Any:
        if key in ("now", "issued"):
            return _ms_time(time.time() - (86400 * 30 if key == "issued" else 0))
        return _CTX_DEFAULTS.get(key, "unknown")


def _ms_time(ts: float) -> str:
    """Microsoft's error timestamp format: '2026-01-09 02:02:12Z'."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def error_body(
    code: int, *, error: str | None = None, correlation_id: str | None = None, **ctx: Any
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, Microsoft-shaped JSON body) for an AADSTS code; usable without a server."""
    spec = AADSTS_ERRORS.get(code, AadError(400, "invalid_request", "Simulated identity platform error."))
    trace_id = str(uuid.uuid4())
    corr = correlation_id or str(uuid.uuid4())
    stamp = _ms_time(time.time())
    text = spec.text.format_map(_Ctx(ctx))
    body: dict[str, Any] = {
        "error": error or spec.error,
        "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {corr}"
        f"\r\nTimestamp: {stamp}",
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": corr,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    if spec.suberror:
        body["suberror"] = spec.suberror
    return spec.status, body


# ---------------------------------------------------------------------------------------------
# In-process helpers shared by the admin API, seed.py and tests


def find_user(state: SimState, upn: str) -> SimUser | None:
    """UPNs are case-insensitive in Entra ID."""
    user = state.users.get(upn)
    if user is not None:
        return user
    low = upn.lower()
    return next((u for k, u in state.users.items() if k.lower() == low), None)


def approve_device_code(state: SimState, user_code: str, upn: str) -> bool:
    """Mark the pending device code with this user_code as signed in by `upn` (what a browser would do)."""
    with state.lock:
        for entry in state.device_codes.values():
            if str(entry.get("user_code", "")).upper() == user_code.strip().upper():
                entry["user"] = upn
                return True
    return False


def revoke_refresh_tokens(state: SimState, upn: str) -> int:
    """Invalidate every refresh token of a user (password reset / revoke sessions): AADSTS50173 afterwards."""
    low = upn.lower()
    with state.lock:
        doomed = [rt for rt, (_, owner, _) in state.refresh_tokens.items() if owner.lower() == low]
        for rt in doomed:
            del state.refresh_tokens[rt]
    return len(doomed)


def expire_refresh_tokens(state: SimState, upn: str) -> int:
    """Lapse every refresh token of a user (90 days inactive): AADSTS700082 afterwards."""
    low = upn.lower()
    with state.lock:
        doomed = [rt for rt, (_, owner, _) in state.refresh_tokens.items() if owner.lower() == low]
        for rt in doomed:
            del state.refresh_tokens[rt]
            state.expired_refresh_tokens.add(rt)
    return len(doomed)


_MAILBOX_FAULT_FIELDS = {
    "imap_enabled": True, "pop_enabled": True, "smtp_auth_disabled": False, "not_accessible": False,
    "security_defaults": False, "conditional_access": False,
}


def reset_faults(state: SimState) -> None:
    """Back to a healthy tenant: no token/server faults, SMTP AUTH on, mailbox switches off, counters 0."""
    with state.lock:
        state.token_faults.clear()
        state.server_faults.clear()
        state.tenant_smtp_auth_disabled = False
        for mailbox in state.mailboxes.values():
            for name, value in _MAILBOX_FAULT_FIELDS.items():
                if hasattr(mailbox, name):
                    setattr(mailbox, name, value)
        state.counters.clear()


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Check one JSON value against a dataclass field's declared type (annotations are strings here)."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    if name not in by_name:
        raise ValueError(f"unknown field {name!r} for {cls.__name__}")
    kind = str(by_name[name].type)
    if value is None:
        if "None" in kind:
            return None
        raise ValueError(f"{name} must not be null")
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
    elif kind.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind.startswith("float"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind.startswith("str"):
        if isinstance(value, str):
            return value
    elif kind.startswith(("set[", "list[")):
        if isinstance(value, list | tuple | set) and all(isinstance(v, str) for v in value):
            return set(value) if kind.startswith("set[") else list(value)
    else:
        return value
    raise ValueError(f"{name} must be {kind}")


def _merge(obj: Any, body: dict[str, Any]) -> None:
    values = {k: _coerce(type(obj), k, v) for k, v in body.items()}  # validate all before changing any
    for k, v in values.items():
        setattr(obj, k, v)


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _admin_loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(ADMIN_PREFIX) and not _is_loopback(request.remote):
        return web.json_response({"error": "the simulator admin API is loopback-only"}, status=403)
    return await handler(request)


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
        self.app = web.Application(middlewares=[_admin_loopback_only])
        r = self.app.router
        r.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid_configuration)
        r.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        r.add_post("/{tenant}/oauth2/v2.0/devicecode", self._devicecode)
        r.add_post("/_sim/faults/token/{key}", self._admin_set_token_fault)
        r.add_delete("/_sim/faults/token/{key}", self._admin_delete_token_fault)
        r.add_post("/_sim/faults/server/{protocol}", self._admin_server_fault)
        r.add_post("/_sim/mailbox/{address}", self._admin_mailbox)
        r.add_post("/_sim/users/{upn}/revoke", self._admin_revoke)
        r.add_post("/_sim/users/{upn}/expire", self._admin_expire)
        r.add_post("/_sim/users/{upn}", self._admin_user)
        r.add_post("/_sim/tenant", self._admin_tenant)
        r.add_post("/_sim/devicecode/approve", self._admin_approve)
        r.add_get("/_sim/stats", self._admin_stats)
        r.add_post("/_sim/reset", self._admin_reset)

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
                "now": _ms_time(now),
                "nbf": _ms_time(float(nbf)) if isinstance(nbf, int | float) else "unknown",
                "exp": _ms_time(float(exp)),
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

    # -- admin API ------------------------------------------------------------------------

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"invalid JSON: {exc}"}),
                                     content_type="application/json") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text=json.dumps({"error": "body must be a JSON object"}),
                                     content_type="application/json")
        return body

    @staticmethod
    def _bad(message: str, status: int = 400) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def _admin_set_token_fault(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        try:
            fault = TokenFault(**{k: _coerce(TokenFault, k, v) for k, v in body.items()})
        except ValueError as exc:
            return self._bad(str(exc))
        key = request.match_info["key"]
        with self.state.lock:
            self.state.token_faults[key] = fault
        return web.json_response({"key": key, "fault": dataclasses.asdict(fault)})

    async def _admin_delete_token_fault(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        with self.state.lock:
            removed = self.state.token_faults.pop(key, None) is not None
        return web.json_response({"key": key, "deleted": removed})

    async def _admin_server_fault(self, request: web.Request) -> web.Response:
        protocol = request.match_info["protocol"]
        if protocol not in ("imap", "pop3", "smtp"):
            return self._bad(f"unknown protocol {protocol!r} (imap | pop3 | smtp)", 404)
        body = await self._json(request)
        with self.state.lock:
            fault = self.state.server_faults.get(protocol) or ServerFault()
            try:
                _merge(fault, body)
            except ValueError as exc:
                return self._bad(str(exc))
            self.state.server_faults[protocol] = fault
        return web.json_response({"protocol": protocol, "fault": dataclasses.asdict(fault)})

    async def _admin_mailbox(self, request: web.Request) -> web.Response:
        address = request.match_info["address"]
        body = await self._json(request)
        body.pop("address", None)
        with self.state.lock:
            mailbox = self.state.mailboxes.get(address) or SimMailbox(address)
            try:
                _merge(mailbox, body)
            except ValueError as exc:
                return self._bad(str(exc))
            self.state.mailboxes[address] = mailbox
            fields = dataclasses.asdict(mailbox).items()
            shown = {k: sorted(v) if isinstance(v, set) else v for k, v in fields}
        return web.json_response(shown)

    async def _admin_user(self, request: web.Request) -> web.Response:
        upn = request.match_info["upn"]
        body = await self._json(request)
        body.pop("upn", None)
        with self.state.lock:
            user = find_user(self.state, upn) or SimUser(upn)
            try:
                _merge(user, body)
            except ValueError as exc:
                return self._bad(str(exc))
            self.state.users[user.upn] = user
            shown = {k: v for k, v in dataclasses.asdict(user).items() if k != "password"}
        return web.json_response(shown)

    async def _admin_revoke(self, request: web.Request) -> web.Response:
        upn = request.match_info["upn"]
        return web.json_response({"upn": upn, "revoked": revoke_refresh_tokens(self.state, upn)})

    async def _admin_expire(self, request: web.Request) -> web.Response:
        upn = request.match_info["upn"]
        return web.json_response({"upn": upn, "expired": expire_refresh_tokens(self.state, upn)})

    async def _admin_tenant(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        unknown = set(body) - {"smtp_auth_disabled", "token_lifetime"}
        if unknown:
            return self._bad(f"unknown tenant fields {sorted(unknown)}")
        smtp = body.get("smtp_auth_disabled")
        lifetime = body.get("token_lifetime")
        if smtp is not None and not isinstance(smtp, bool):
            return self._bad("smtp_auth_disabled must be a boolean")
        if lifetime is not None and (type(lifetime) is not int or lifetime < 1):
            return self._bad("token_lifetime must be a positive integer")
        with self.state.lock:
            if smtp is not None:
                self.state.tenant_smtp_auth_disabled = smtp
            if lifetime is not None:
                self.state.token_lifetime = lifetime
            out = {"smtp_auth_disabled": self.state.tenant_smtp_auth_disabled,
                   "token_lifetime": self.state.token_lifetime}
        return web.json_response(out)

    async def _admin_approve(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        user_code, upn = body.get("user_code"), body.get("upn")
        if not isinstance(user_code, str) or not isinstance(upn, str):
            return self._bad("user_code and upn are required strings")
        if not approve_device_code(self.state, user_code, upn):
            return self._bad(f"no pending device code {user_code!r}", 404)
        return web.json_response({"user_code": user_code, "upn": upn, "approved": True})

    async def _admin_stats(self, request: web.Request) -> web.Response:
        with self.state.lock:
            items = sorted(self.state.counters.items())
        return web.json_response({"counters": [{"key": list(k), "count": n} for k, n in items]})

    async def _admin_reset(self, request: web.Request) -> web.Response:
        reset_faults(self.state)
        return web.json_response({"reset": True})
