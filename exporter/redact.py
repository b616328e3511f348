"""Redaction of secrets from any text that may reach logs, debug output or errors.

Why by value: server replies and library exceptions can echo what we sent, whole or in part
(Dovecot quoting part of a SASL response, a proxy echoing a token's signature segment). A rule
about line *shapes* both misses such fragments and hides harmless lines (Postfix's capability
line `250-AUTH XOAUTH2 OAUTHBEARER` is not a credential). So every secret the exporter holds is
registered here when it comes into being (client secrets read from files, access and refresh
tokens from MSAL, each segment of a JWT, the SASL XOAUTH2 response built for a probe), and
`redact` removes every registered secret and every fragment of at least FRAGMENT chars of one.

How, efficiently: each registered secret contributes its FRAGMENT-character windows to one hash
set; a text is scanned once, window by window, and the union of matching windows is exactly the
set of characters that belong to some >= FRAGMENT-char substring of a secret. Cost is one slice
and one set lookup per character of text, independent of the number of secrets
(bench/bench_redact.py prints the figures). The registry is bounded (MAX_SECRETS, oldest first
out): tokens rotate hourly and a forgotten old token is no longer a credential.

Shape rules remain only for things we never hold but must never show: PEM private keys,
bearer headers, `key=value` credential parameters and JWTs from elsewhere.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

FRAGMENT = 16  # shortest echoed piece of a secret that is redacted (shorter ones are not a credential)
MIN_SECRET = 6  # shorter registered values are replaced only when whole (see register_secret)
MAX_SECRETS = 512  # registered values kept; the oldest are forgotten first
PLACEHOLDER = "[REDACTED]"

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\x01\"']+")
_KV = re.compile(
    r"(?i)((?:access_token|refresh_token|id_token|client_secret|client_assertion|password|device_code|code)"
    r"[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"
)
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)


class SecretRegistry:
    """Registered secret values and the index of their FRAGMENT-char windows (thread-safe)."""

    def __init__(self, fragment: int = FRAGMENT, max_secrets: int = MAX_SECRETS) -> None:
        self.fragment = fragment
        self.max_secrets = max_secrets
        self._lock = threading.Lock()
        self._secrets: OrderedDict[str, None] = OrderedDict()
        self._windows: dict[str, int] = {}  # window -> number of registered secrets containing it
        self._short: set[str] = set()  # secrets shorter than a window: replaced when whole

    def _add_windows(self, value: str, step: int) -> None:
        k = self.fragment
        for w in {value[i:i + k] for i in range(len(value) - k + 1)}:
            self._windows[w] = self._windows.get(w, 0) + step
            if self._windows[w] <= 0:
                del self._windows[w]

    def register(self, value: str) -> None:
        value = value.strip()
        if len(value) < MIN_SECRET:
            return
        with self._lock:
            if value in self._secrets:
                self._secrets.move_to_end(value)
                return
            self._secrets[value] = None
            if len(value) < self.fragment:
                self._short.add(value)
            else:
                self._add_windows(value, 1)
            while len(self._secrets) > self.max_secrets:
                old, _ = self._secrets.popitem(last=False)
                if len(old) < self.fragment:
                    self._short.discard(old)
                else:
                    self._add_windows(old, -1)

    def __len__(self) -> int:
        return len(self._secrets)

    def scrub(self, text: str) -> str:
        """`text` with every registered secret and every >= fragment-char piece of one replaced."""
        k = self.fragment
        with self._lock:
            windows = self._windows
            short = list(self._short)
            spans: list[tuple[int, int]] = []
            if windows and len(text) >= k:
                start = end = -1
                for i in range(len(text) - k + 1):
                    if text[i:i + k] in windows:
                        if i <= end:  # overlaps or touches the current span: extend it
                            end = i + k
                        else:
                            if end > 0:
                                spans.append((start, end))
                            start, end = i, i + k
                if end > 0:
                    spans.append((start, end))
        if spans:
            out, pos = [], 0
            for s, e in spans:
                out += [text[pos:s], PLACEHOLDER]
                pos = e
            out.append(text[pos:])
            text = "".join(out)
        for s in short:
            if s in text:
                text = text.replace(s, PLACEHOLDER)
        return text


REGISTRY = SecretRegistry()


def register_secret(value: str) -> None:
    """Remember a secret value (client secret, token, SASL response...) to scrub everywhere."""
    REGISTRY.register(value)


def register_token(token: str) -> None:
    """An access/refresh/id token: the whole value and, for a JWT, each of its segments."""
    if not token:
        return
    REGISTRY.register(token)
    for segment in token.split("."):
        REGISTRY.register(segment)


def redact(text: str) -> str:
    if not text:
        return text
    text = REGISTRY.scrub(text)
    text = _PEM.sub("[REDACTED PRIVATE KEY]", text)
    text = _BEARER.sub(r"\1[REDACTED]", text)
    text = _JWT.sub("[REDACTED JWT]", text)
    text = _KV.sub(r"\1[REDACTED]", text)
    return text
