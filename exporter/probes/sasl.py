"""SASL XOAUTH2: the initial client response, and safe decoding of a server's error challenge.

Why a module of its own: IMAP, POP3 and SMTP all send the same XOAUTH2 string, and all three
must treat it as a secret (it embeds the bearer token). Keeping its construction in one place
makes it easy to audit that nothing else formats the token. The server's error challenge
(`+ <base64 JSON>` / `334 <base64 JSON>`, Gmail-style; Exchange Online usually just says NO)
is hostile input: it is decoded strictly, size-capped, and only a few short, known fields are
kept, so a malicious server cannot inject arbitrary text into our detail strings.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from ..reasons import Reason
from ..redact import register_token
from .lineio import ProbeFailure

MAX_CHALLENGE_CHARS = 4096  # base64 characters we are willing to decode
_SAFE_VALUE = re.compile(r"[A-Za-z0-9 ._:/+-]{1,80}")
_KEPT_FIELDS = ("status", "schemes", "scope")


def xoauth2_raw(user: str, token: str) -> bytes:
    """The unencoded XOAUTH2 initial response: user=ADDR^Aauth=Bearer TOKEN^A^A."""
    if "\x01" in user or "\x01" in token:
        raise ValueError("XOAUTH2 user or token contains a ^A separator")
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def xoauth2_b64(user: str, token: str) -> str:
    """The base64 XOAUTH2 initial response as sent on the wire (a secret: never log it).
    The token is registered for redaction everywhere; the response itself is scrubbed, fragments
    included, by the probe's MailConnection (it lives for one connection)."""
    register_token(token)
    return base64.b64encode(xoauth2_raw(user, token)).decode("ascii")


def initial_response(user: str, token: str) -> str:
    """xoauth2_b64 for use inside a probe session: a malformed input is a classified failure."""
    try:
        return xoauth2_b64(user, token)
    except ValueError:
        raise ProbeFailure(Reason.UNKNOWN, "mailbox address or token contains a ^A (0x01)") from None


def sasl_secrets(user: str, token: str) -> tuple[str, ...]:
    """Strings that must never appear in a transcript or detail: the token and its SASL form."""
    try:
        return (token, xoauth2_b64(user, token))
    except ValueError:
        return (token,)


def describe_challenge(challenge: str) -> str:
    """A short, safe description of a server's XOAUTH2 error challenge (the text after `+`/`334`).

    Never raises. Only `status`, `schemes` and `scope` are kept, and only when their values are
    short plain strings; anything else is summarised as undecodable.
    """
    text = challenge.strip()
    if not text:
        return "empty challenge"
    if len(text) > MAX_CHALLENGE_CHARS:
        return f"oversized challenge ({len(text)} chars)"
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return "challenge is not valid base64"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "challenge is not JSON"
    if not isinstance(obj, dict):
        return "challenge is not a JSON object"
    parts = []
    for key in _KEPT_FIELDS:
        value = obj.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and _SAFE_VALUE.fullmatch(value):
            parts.append(f"{key}={value}")
    return "server error challenge: " + (", ".join(parts) if parts else "no known fields")
