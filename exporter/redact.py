"""Redaction of secrets from any text that may reach logs, debug output or errors.

Why by value: server replies and library exceptions can echo what we sent, whole or in part
(Dovecot quoting part of a SASL response, a proxy echoing a token's signature segment). A rule
about line *shapes* both misses such fragments and hides harmless lines (Postfix's capability
line `250-AUTH XOAUTH2 OAUTHBEARER` is not a credential). So every secret the exporter holds is
registered here when it comes into being (client secrets read from files, access and refresh
tokens from MSAL, each segment of a JWT, the SASL XOAUTH2 response built for a probe), and
`redact` removes every registered secret and every fragment of at least FRAGMENT chars of one.

How, efficiently: each registered secret contributes sampled 8-character pieces to one hash
index (see SecretRegistry); a text is scanned once, one slice and one lookup per character,
independent of the number of secrets, and only real hits are extended and compared
(bench/bench_redact.py prints the figures). The registry is bounded (MAX_SECRETS, oldest first
out): tokens rotate hourly and a forgotten old token is no longer a credential.

Shape rules remain only for things we never hold but must never show: PEM private keys,
bearer headers, `key=value` credential parameters and JWTs from elsewhere.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable

FRAGMENT = 16  # shortest echoed piece of a secret that is redacted (shorter ones are not a credential)
MIN_SECRET = 6  # shorter registered values are replaced only when whole (see register_secret)
MAX_SECRETS = 256  # registered values kept (~14 MiB at most for access-token-sized values); oldest out first
PLACEHOLDER = "[REDACTED]"

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\x01\"']+")
_KV = re.compile(
    r"(?i)((?:access_token|refresh_token|id_token|client_secret|client_assertion|password|device_code|code)"
    r"[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"
)
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)


class SecretRegistry:
    """Registered secret values and an index of sampled pieces of them (thread-safe).

    Index: the KEY-char piece of each secret at every STRIDE-th offset. Any substring of a secret
    of length >= KEY + STRIDE - 1 (= fragment) contains one of them whole, so scanning a text's
    KEY-char windows finds every candidate; each hit is extended both ways against the secret it
    came from, and redacted when the common run is >= fragment characters. Sampling keeps the
    index about STRIDE times smaller than indexing every offset (bench/bench_redact.py).
    """

    KEY = 8

    def __init__(self, fragment: int = FRAGMENT, max_secrets: int = MAX_SECRETS) -> None:
        if fragment < self.KEY:
            raise ValueError(f"fragment must be >= {self.KEY}")
        self.fragment = fragment
        self.stride = fragment - self.KEY + 1
        self.max_secrets = max_secrets
        self._lock = threading.Lock()
        self._secrets: OrderedDict[str, None] = OrderedDict()
        self._index: dict[str, list[tuple[str, int]]] = {}  # piece -> (secret, offset of the piece)
        self._short: set[str] = set()  # secrets shorter than a fragment: replaced when whole

    def _pieces(self, value: str) -> list[tuple[str, int]]:
        return [(value[o:o + self.KEY], o) for o in range(0, len(value) - self.KEY + 1, self.stride)]

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
                for piece, off in self._pieces(value):
                    self._index.setdefault(piece, []).append((value, off))
            while len(self._secrets) > self.max_secrets:
                self._forget(self._secrets.popitem(last=False)[0])

    def _forget(self, old: str) -> None:
        if len(old) < self.fragment:
            self._short.discard(old)
            return
        for piece, off in self._pieces(old):
            entries = [e for e in self._index.get(piece, []) if e != (old, off)]
            if entries:
                self._index[piece] = entries
            else:
                self._index.pop(piece, None)

    def __len__(self) -> int:
        return len(self._secrets)

    def _spans(self, text: str) -> list[tuple[int, int]]:
        k, index, found = self.KEY, self._index, []
        for i in range(len(text) - k + 1):
            hits = index.get(text[i:i + k])
            if not hits:
                continue
            for secret, off in hits:
                _extend(text, i, secret, off, k, self.fragment, found)
        return _merge(found)

    def scrub(self, text: str) -> str:
        """`text` with every registered secret and every >= fragment-char piece of one replaced."""
        with self._lock:
            spans = self._spans(text) if self._index and len(text) >= self.fragment else []
            short = list(self._short)
        return _replace(text, spans, short)


class ProbeSecrets:
    """The few secrets one probe holds (its access token and SASL response), scrubbed without an index.

    Why not a SecretRegistry per probe: building its index costs a slice and a dict entry per
    STRIDE characters of every secret (~500 for a token and its SASL response) on every probe,
    ~7 % of the exporter's CPU at 10,000 mailboxes, while a probe scrubs a few short lines.
    Sampling the *text* instead finds the same runs: a common run of >= fragment characters
    contains a KEY-character window of the text that starts at a multiple of STRIDE, and
    `str.find` looks for it in each secret in C. Same output as SecretRegistry.scrub for the
    same secrets (tests/test_honest_reasons.py)."""

    __slots__ = ("_long", "_short", "_spaceless", "fragment", "stride")

    def __init__(self, secrets: Iterable[str], fragment: int = FRAGMENT) -> None:
        if fragment < SecretRegistry.KEY:
            raise ValueError(f"fragment must be >= {SecretRegistry.KEY}")
        self.fragment = fragment
        self.stride = fragment - SecretRegistry.KEY + 1
        values = list(dict.fromkeys(v.strip() for v in secrets))
        self._long = [v for v in values if len(v) >= fragment]
        self._short = [v for v in values if MIN_SECRET <= len(v) < fragment]
        # tokens and SASL responses (base64) have no space, server lines have many: a window
        # with a space cannot be part of such a secret, and `in` is cheaper than `find`
        self._spaceless = all(" " not in v for v in self._long)

    def _spans(self, text: str) -> list[tuple[int, int]]:
        k, found = SecretRegistry.KEY, []
        for i in range(0, len(text) - k + 1, self.stride):
            window = text[i:i + k]
            if self._spaceless and " " in window:
                continue
            for secret in self._long:
                off = secret.find(window)
                while off >= 0:
                    _extend(text, i, secret, off, k, self.fragment, found)
                    off = secret.find(window, off + 1)
        return _merge(found)

    def scrub(self, text: str) -> str:
        """`text` with each of the probe's secrets and every >= fragment-char piece of one replaced."""
        spans = self._spans(text) if self._long and len(text) >= self.fragment else []
        return _replace(text, spans, self._short)


def _extend(text: str, i: int, secret: str, off: int, k: int, fragment: int, found: list[tuple[int, int]]) -> None:
    """A k-char match of text[i:] and secret[off:], grown both ways; kept when >= fragment chars."""
    left = 0
    while i - left > 0 and off - left > 0 and text[i - left - 1] == secret[off - left - 1]:
        left += 1
    right = 0
    end, send = len(text), len(secret)
    while i + k + right < end and off + k + right < send and text[i + k + right] == secret[off + k + right]:
        right += 1
    if left + k + right >= fragment:
        found.append((i - left, i + k + right))


def _merge(found: list[tuple[int, int]]) -> list[tuple[int, int]]:
    found.sort()
    merged: list[tuple[int, int]] = []
    for s, e in found:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _replace(text: str, spans: list[tuple[int, int]], short: list[str]) -> str:
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
