"""Turn MSAL results and HTTP/network exceptions into a TokenError with a closed-set reason.

Why separate: MSAL reports failures three ways (an error dict, MsalServiceError, raw
`requests` exceptions) and none carries the HTTP status or Retry-After; the provider's HTTP
client observes those. This module joins the pieces into one reason an operator can act on.

Socket and TLS errors found under requests' wrappers are mapped by probes/neterrors.py, the
mapping the endpoint and mail probes use, so a broken path to the login host reads the same
as a broken path to the mail host; only requests' own exceptions are handled here.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from typing import Any

import requests

from ..probes import neterrors
from ..reasons import Reason, classify_aadsts
from ..redact import redact
from .http import MsalHttpClient


class TokenError(Exception):
    """A failed token acquisition: reason from the closed set, redacted detail, optional retry hint."""

    def __init__(self, reason: Reason, detail: str = "", retry_after: float | None = None) -> None:
        self.reason = reason
        self.detail = redact(detail)[:500]
        self.retry_after = retry_after
        super().__init__(f"{reason.value}: {self.detail}")


_AADSTS = re.compile(r"AADSTS(\d+)")


def from_msal_result(result: dict[str, Any], status: int | None, retry_after: float | None) -> TokenError:
    codes = [int(c) for c in result.get("error_codes") or [] if isinstance(c, int | str) and str(c).isdigit()]
    desc = str(result.get("error_description") or "")
    if not codes:
        codes = [int(c) for c in _AADSTS.findall(desc)]
    reason = classify_aadsts(result.get("error"), codes, status)
    first_line = desc.splitlines()[0] if desc else str(result.get("error", "error"))
    return TokenError(reason, first_line, retry_after)


# What neterrors may conclude from an exception under a requests wrapper, TLS aside.
_PATH_REASONS = frozenset({
    Reason.DNS_NXDOMAIN, Reason.DNS_SERVFAIL, Reason.CONNECTION_REFUSED, Reason.CONNECTION_RESET, Reason.TIMEOUT,
})


def from_observed_exception(exc: BaseException, http: MsalHttpClient) -> TokenError:
    """MSAL raises on non-JSON error bodies (e.g. Entra's or a proxy's plain 429/503 page); the
    HTTP status our client observed is then the best evidence, else the exception itself."""
    status, retry_after = http.last_status, http.last_retry_after
    if status == 429:
        return TokenError(Reason.THROTTLED, "HTTP 429 Too Many Requests from the identity platform", retry_after)
    if status is not None and status >= 500:
        return TokenError(Reason.IDP_UNAVAILABLE, f"HTTP {status} from the identity platform", retry_after)
    if status == 407:
        return TokenError(Reason.PROXY_ERROR, "HTTP 407 proxy authentication required")
    if status is not None and any(isinstance(c, json.JSONDecodeError) for c in _causes(exc)):
        # Entra always answers JSON; anything else (a sign-in page, a proxy's block page) is not Entra
        kind = (http.last_content_type or "no content type").split(";")[0].strip()
        return TokenError(Reason.IDP_RESPONSE_INVALID,
                          f"HTTP {status} {kind} from the login endpoint instead of JSON: a captive portal "
                          "or TLS-inspecting proxy answered")
    return from_exception(exc)


# PyJWT signs the client assertion with the configured key: a truncated or non-PEM key fails there
# ("Could not parse the provided public key." after it failed as a private key too).
_KEY_ERRORS = ("could not parse the provided", "could not deserialize key data", "unable to load pem",
               "bad decrypt", "password was not given but private key is encrypted", "incorrect password")


def _is_key_error(exc: BaseException) -> bool:
    if type(exc).__name__ == "InvalidKeyError":
        return True
    text = str(exc).lower()
    return isinstance(exc, ValueError | TypeError) and any(k in text for k in _KEY_ERRORS)


def from_exception(exc: BaseException) -> TokenError:
    """Network/TLS/proxy failures on the way to the identity platform."""
    name = type(exc).__name__
    chain = _causes(exc)
    if isinstance(exc, requests.exceptions.ProxyError):
        return TokenError(Reason.PROXY_ERROR, f"{name}: proxy refused or failed the connection")
    for cause in chain:  # a failed certificate check explains whatever wraps it
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TokenError(neterrors.classify(cause), f"login host: {neterrors.describe(cause)}")
    if isinstance(exc, requests.exceptions.SSLError):
        for cause in chain:
            if isinstance(cause, ssl.SSLError):
                return TokenError(neterrors.classify(cause), f"login host: {neterrors.describe(cause)}")
        text = str(exc)  # the ssl error only survives as text
        if "CERTIFICATE_VERIFY_FAILED" in text:
            if "expired" in text:
                return TokenError(Reason.TLS_CERT_EXPIRED, "TLS verification failed: certificate has expired")
            if "Hostname mismatch" in text or "doesn't match" in text:
                return TokenError(Reason.TLS_HOSTNAME_MISMATCH, "TLS verification failed: hostname mismatch")
            return TokenError(Reason.TLS_UNTRUSTED, "TLS verification failed: certificate not trusted")
        return TokenError(Reason.TLS_HANDSHAKE_FAILED, f"{name}: TLS handshake failed")
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        return TokenError(Reason.TIMEOUT, f"{name}: no answer from the identity platform within the timeout")
    # Under a requests exception everything came off the socket; elsewhere only a socket error's own
    # type is evidence (a PermissionError saving the token cache has an errno, but is no firewall).
    wire = isinstance(exc, requests.exceptions.RequestException)
    for cause in chain:  # no descriptor left (anywhere: socket, CA bundle): the exporter's own overload
        if isinstance(cause, OSError) and neterrors.classify(cause) is Reason.EXPORTER_OVERLOADED:
            return TokenError(Reason.EXPORTER_OVERLOADED, f"{name}: {neterrors.describe(cause)}")
    for cause in chain:
        if wire or isinstance(cause, socket.gaierror | ConnectionError):
            reason = neterrors.classify(cause)
            if reason in _PATH_REASONS:
                return TokenError(reason, f"login host: {neterrors.describe(cause)}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        if "Name or service not known" in text or "nodename nor servname" in text:
            return TokenError(Reason.DNS_NXDOMAIN, "cannot resolve the login host")
        if "Connection refused" in text:
            return TokenError(Reason.CONNECTION_REFUSED, "connection to the login host refused")
        if "reset" in text.lower() or "RemoteDisconnected" in text:
            return TokenError(Reason.CONNECTION_RESET, "connection to the login host reset")
        return TokenError(Reason.IDP_UNAVAILABLE, f"{name}: cannot reach the identity platform")
    if type(exc).__name__ == "MsalServiceError":
        return TokenError(Reason.IDP_UNAVAILABLE, f"identity platform error: {exc}")
    for cause in chain:
        if _is_key_error(cause):
            return TokenError(Reason.PRIVATE_KEY_INVALID,
                              f"cannot sign the client assertion with the configured private key ({name})")
    if isinstance(exc, ValueError) and "authority" in str(exc).lower():
        return TokenError(Reason.TENANT_NOT_FOUND, f"authority rejected: {exc}")
    return TokenError(Reason.UNKNOWN, f"{name}: {exc}")


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack and len(out) < 20:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        out.append(cur)
        stack.extend([cur.__cause__, cur.__context__])
        for arg in getattr(cur, "args", ()):
            if isinstance(arg, BaseException):
                stack.append(arg)
        reason = getattr(cur, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return out
