"""Microsoft-shaped error answers of the identity platform: the AADSTS code table and its JSON bodies.

Why a table of real codes and texts: the exporter classifies token failures (`exporter.reasons`)
from what Microsoft actually sends: the HTTP status, the OAuth `error`, the `AADSTS<code>` in
`error_description`, `error_codes`, `suberror` (which MSAL turns into `result["classification"]`)
and the trace/correlation ids it logs. Answering with the same shapes, texts included, tests that
classification against the real thing rather than against what we think Microsoft says.

`error_body` needs no server, so tests can build the exact body an AADSTS code produces.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"  # Office 365 Exchange Online's appId


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
    1000502: AadError(401, "invalid_client",
        "Client assertion contains a certificate that is not within its specified validity window: the "
        "certificate registered for app '{client_id}' has expired. Upload a new certificate."),
    50011: AadError(400, "invalid_request",
        "The redirect URI specified in the request does not match the redirect URIs configured for the "
        "application '{client_id}'. Make sure the redirect URI sent in the request matches one added to your "
        "application in the Azure portal."),
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
            return ms_time(time.time() - (86400 * 30 if key == "issued" else 0))
        return _CTX_DEFAULTS.get(key, "unknown")


def ms_time(ts: float) -> str:
    """Microsoft's error timestamp format: '2026-01-09 02:02:12Z'."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def error_body(
    code: int, *, error: str | None = None, correlation_id: str | None = None, **ctx: Any
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, Microsoft-shaped JSON body) for an AADSTS code; usable without a server."""
    spec = AADSTS_ERRORS.get(code, AadError(400, "invalid_request", "Simulated identity platform error."))
    trace_id = str(uuid.uuid4())
    corr = correlation_id or str(uuid.uuid4())
    stamp = ms_time(time.time())
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
