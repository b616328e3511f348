"""Redaction of secrets from any text that may reach logs, debug output or errors.

Why pattern-based on top of "never log secrets": server replies and library exceptions can
echo what we sent (SASL responses, bearer tokens, JWTs, refresh tokens). Every transcript
line, detail string and log record passes through `redact` as a last line of defence.
Exact known secrets (client secrets read from files) are registered with `register_secret`.
"""

from __future__ import annotations

import re
import threading

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\x01\"']+")
_XOAUTH2 = re.compile(r"(?i)(AUTHENTICATE\s+XOAUTH2\s+|AUTH\s+XOAUTH2\s+)\S+")
_KV = re.compile(
    r"(?i)((?:access_token|refresh_token|id_token|client_secret|client_assertion|password|device_code|code)"
    r"[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"
)
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
# A long base64 blob on its own (e.g. the XOAUTH2 initial response sent on a line by itself).
_B64_BLOB = re.compile(r"^[A-Za-z0-9+/=]{60,}$")

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Remember an exact secret value (e.g. a client secret read from a file) to scrub everywhere."""
    value = value.strip()
    if len(value) >= 6:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    if not text:
        return text
    with _lock:
        known = list(_secrets)
    for s in known:
        if s in text:
            text = text.replace(s, "[REDACTED]")
    text = _PEM.sub("[REDACTED PRIVATE KEY]", text)
    text = _XOAUTH2.sub(r"\1[REDACTED]", text)
    text = _BEARER.sub(r"\1[REDACTED]", text)
    text = _JWT.sub("[REDACTED JWT]", text)
    text = _KV.sub(r"\1[REDACTED]", text)
    if _B64_BLOB.match(text.strip()):
        text = "[REDACTED SASL RESPONSE]"
    return text
