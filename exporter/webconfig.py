"""The web configuration file (`--web.config.file`) in Prometheus exporter-toolkit format.

Why this format: SREs already run node_exporter and blackbox_exporter with one web-config file
(TLS, client certificates, bcrypt basic auth); the same file must work here unchanged. Where
Python's `ssl` cannot do what a Go exporter does, the key is refused by name with the reason,
never silently ignored: an operator who asked for a client-certificate policy or a curve list
must not believe it is in force when it is not.

Relative file names are relative to the web-config file's directory (as in exporter-toolkit).
An empty file is refused: a truncated file must never turn TLS and authentication off.

`WebConfigWatcher` re-reads the file when its mtime/size/inode (or that of a certificate,
key or CA file it names) changes, checked at most every `RECHECK_SECONDS`, so a rotated
certificate is used for the next new connection without a restart. A change that does not
load keeps the running configuration (logged once per change).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 20  # a web config is a few hundred bytes; 1 MiB is generous
RECHECK_SECONDS = 2.0

TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users", "basic_auth_excluded_paths",
            "rate_limit"}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "client_ca", "client_allowed_sans",
            "min_version", "max_version", "cipher_suites", "prefer_server_cipher_suites", "curve_preferences"}
TLS_REFUSED = {
    "cert": "inline certificates are not supported (Python's ssl loads a key pair only from files); "
            "use cert_file and key_file",
    "key": "inline private keys are not supported (Python's ssl loads a key pair only from files, and writing the "
           "key to a temporary file would put a secret on disk); use cert_file and key_file",
}
HTTP_KEYS = {"http2", "headers"}
# the headers exporter-toolkit lets a web config set, with the values it accepts (None: any)
ALLOWED_HEADERS: dict[str, set[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": {"deny", "sameorigin"},
    "X-Content-Type-Options": {"nosniff"},
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go crypto/tls names (tls.CipherSuites(), TLS <= 1.2) -> OpenSSL names. TLS 1.3 suites are not
# configurable in Go either; InsecureCipherSuites() are refused as exporter-toolkit does.
GO_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
GO_TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
# Go tls.CurveID names -> OpenSSL group names. Python 3.11's ssl sets exactly one group
# (SSLContext.set_ecdh_curve), so a list of more than one is refused.
GO_CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}

# Go tls.ClientAuthType names -> ssl verify mode. The two that ask for a certificate without
# verifying it cannot be expressed with Python's ssl (it verifies whenever it asks).
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
CLIENT_AUTH_REFUSED = {
    "RequestClientCert": "asks for a certificate without verifying it, which Python's ssl cannot do "
                         "(and which is insecure); use VerifyClientCertIfGiven or RequireAndVerifyClientCert",
    "RequireAnyClientCert": "accepts any certificate without verifying it, which Python's ssl cannot do "
                            "(and which is insecure); use RequireAndVerifyClientCert with client_ca_file",
}


class WebConfigError(Exception):
    """The web config cannot be used; the message names the file and every problem found."""


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str | None = None
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()

    def files(self) -> list[Path]:
        return [p for p in (self.cert_file, self.key_file, self.client_ca_file) if p is not None]

    def context(self) -> ssl.SSLContext:
        """A fresh server SSLContext; raises WebConfigError when a file does not load."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        ctx.maximum_version = TLS_VERSIONS[self.max_version]
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise WebConfigError(f"cannot load cert_file {self.cert_file} / key_file {self.key_file}: "
                                 f"{_words(exc)}") from None
        if self.client_ca_file is not None or self.client_ca is not None:
            try:
                if self.client_ca_file is not None:
                    ctx.load_verify_locations(cafile=str(self.client_ca_file))
                if self.client_ca is not None:
                    ctx.load_verify_locations(cadata=self.client_ca)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise WebConfigError(f"cannot load the client CA: {_words(exc)}") from None
        ctx.verify_mode = CLIENT_AUTH[self.client_auth_type]
        if self.cipher_suites:
            ctx.set_ciphers(":".join(GO_CIPHERS[c] for c in self.cipher_suites))
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        if self.curve_preferences:
            ctx.set_ecdh_curve(GO_CURVES[self.curve_preferences[0]])
        return ctx

    def peer_allowed(self, peercert: dict[str, Any] | None) -> bool:
        """client_allowed_sans: the verified client certificate has one of the listed SANs."""
        if not self.client_allowed_sans:
            return True
        if not peercert:
            return False
        sans = {value for _kind, value in peercert.get("subjectAltName", ())}
        return any(s in sans for s in self.client_allowed_sans)


@dataclass(frozen=True)
class RateLimit:
    interval: float  # seconds between two requests (token bucket refill); 0 disables
    burst: int


@dataclass(frozen=True)
class WebConfig:
    path: Path | None = None
    tls: TLSServerConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    users: tuple[tuple[str, bytes], ...] = ()  # user -> bcrypt hash
    excluded_paths: frozenset[str] = frozenset()
    rate_limit: RateLimit | None = None
    http2: bool = True
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def user_hash(self, user: str) -> bytes | None:
        for name, hashed in self.users:
            if hmac.compare_digest(name.encode(), user.encode()):
                return hashed
        return None


def _words(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


def read_capped(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes, refusing directories, non-regular files and anything over `limit`."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        import stat

        if not stat.S_ISREG(st.st_mode):
            raise WebConfigError(f"{path}: not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise WebConfigError(f"{path}: larger than {limit} bytes; a web config is a few lines")
    return data


def _duration(value: object) -> float:
    from .config import parse_duration

    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float(parse_duration(str(value)))


def parse_web_config(data: bytes, path: Path | None = None, build_context: bool = True) -> WebConfig:
    """Validate a web-config document completely (every problem in one error) and build it."""
    name = str(path) if path else "web config"
    base = path.parent if path else Path(".")
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise WebConfigError(f"{name}: not valid YAML: {type(exc).__name__}: {str(exc)[:200]}") from None
    if doc is None:
        raise WebConfigError(f"{name}: empty web config (refused: a truncated file must not turn TLS and "
                             "authentication off; remove --web.config.file to serve plain HTTP)")
    if not isinstance(doc, dict):
        raise WebConfigError(f"{name}: top level must be a mapping")
    errors: list[str] = []
    for key in doc:
        if key not in TOP_KEYS:
            errors.append(f"unsupported key {key!r} (supported: {', '.join(sorted(TOP_KEYS))})")

    def rel(value: object, what: str) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            errors.append(f"{what} must be a file name")
            return None
        p = Path(value)
        return p if p.is_absolute() else base / p

    def str_list(value: object, what: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            errors.append(f"{what} must be a list of strings")
            return ()
        return tuple(value)

    tls = None
    raw_tls = doc.get("tls_server_config")
    if raw_tls is not None:
        if not isinstance(raw_tls, dict):
            errors.append("tls_server_config must be a mapping")
            raw_tls = {}
        for key in raw_tls:
            if key in TLS_REFUSED:
                errors.append(f"tls_server_config.{key}: {TLS_REFUSED[key]}")
            elif key not in TLS_KEYS:
                errors.append(f"tls_server_config: unsupported key {key!r}")
        cert, keyf = rel(raw_tls.get("cert_file"), "cert_file"), rel(raw_tls.get("key_file"), "key_file")
        if cert is None or keyf is None:
            errors.append("tls_server_config needs cert_file and key_file")
        auth = raw_tls.get("client_auth_type", "NoClientCert")
        if auth in CLIENT_AUTH_REFUSED:
            errors.append(f"client_auth_type {auth}: {CLIENT_AUTH_REFUSED[auth]}")
        elif auth not in CLIENT_AUTH:
            errors.append(f"client_auth_type {auth!r} unknown (supported: {', '.join(CLIENT_AUTH)})")
        ca_file = rel(raw_tls.get("client_ca_file"), "client_ca_file")
        ca_inline = raw_tls.get("client_ca")
        if ca_inline is not None and not isinstance(ca_inline, str):
            errors.append("client_ca must be a PEM string")
            ca_inline = None
        if ca_file is not None and ca_inline is not None:
            errors.append("client_ca and client_ca_file are mutually exclusive")
        if auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and ca_file is None and not ca_inline:
            errors.append(f"client_auth_type {auth} needs client_ca_file (the CA that signs client certificates)")
        if auth == "NoClientCert" and (ca_file is not None or ca_inline):
            errors.append("client_ca_file is set but client_auth_type is NoClientCert: "
                          "set client_auth_type: RequireAndVerifyClientCert")
        sans = str_list(raw_tls.get("client_allowed_sans"), "client_allowed_sans")
        if sans and auth != "RequireAndVerifyClientCert":
            errors.append("client_allowed_sans needs client_auth_type: RequireAndVerifyClientCert")
        versions = []
        for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
            v = raw_tls.get(key, default)
            if v not in TLS_VERSIONS:
                errors.append(f"{key} {v!r} unknown (TLS10, TLS11, TLS12, TLS13)")
                v = default
            versions.append(v)
        if TLS_VERSIONS[versions[0]] > TLS_VERSIONS[versions[1]]:
            errors.append(f"min_version {versions[0]} is above max_version {versions[1]}")
        ciphers = str_list(raw_tls.get("cipher_suites"), "cipher_suites")
        for c in ciphers:
            if c in GO_TLS13_SUITES:
                errors.append(f"cipher_suites: {c} is a TLS 1.3 suite; TLS 1.3 suites are not configurable "
                              "(not in Go either)")
            elif c not in GO_CIPHERS:
                errors.append(f"cipher_suites: {c} unknown or insecure (supported: {', '.join(GO_CIPHERS)})")
        prefer = raw_tls.get("prefer_server_cipher_suites", True)
        if not isinstance(prefer, bool):
            errors.append("prefer_server_cipher_suites must be true or false")
            prefer = True
        curves = str_list(raw_tls.get("curve_preferences"), "curve_preferences")
        for c in curves:
            if c not in GO_CURVES:
                errors.append(f"curve_preferences: {c} unknown (supported: {', '.join(GO_CURVES)})")
        if len(curves) > 1:
            errors.append("curve_preferences: Python's ssl can restrict the handshake to one curve only; "
                          f"list one of {', '.join(curves)}, or none for OpenSSL's defaults")
        if cert is not None and keyf is not None:
            tls = TLSServerConfig(cert, keyf, auth if auth in CLIENT_AUTH else "NoClientCert", ca_file, ca_inline,
                                  sans, versions[0], versions[1], ciphers, prefer, curves)

    headers: list[tuple[str, str]] = []
    http2 = True
    raw_http = doc.get("http_server_config")
    if raw_http is not None:
        if not isinstance(raw_http, dict):
            errors.append("http_server_config must be a mapping")
            raw_http = {}
        for key in raw_http:
            if key not in HTTP_KEYS:
                errors.append(f"http_server_config: unsupported key {key!r}")
        h2 = raw_http.get("http2", True)
        if not isinstance(h2, bool):
            errors.append("http_server_config.http2 must be true or false")
        else:
            # accepted either way: this server offers only HTTP/1.1 in ALPN, which every HTTP/2 client
            # (Prometheus included) falls back to; `false` is therefore always honoured
            http2 = h2
        raw_headers = raw_http.get("headers") or {}
        if not isinstance(raw_headers, dict):
            errors.append("http_server_config.headers must be a mapping")
            raw_headers = {}
        for hname, value in raw_headers.items():
            allowed = ALLOWED_HEADERS.get(hname, ...)
            if allowed is ...:
                errors.append(f"http_server_config.headers: header {hname!r} can not be configured "
                              f"(allowed: {', '.join(ALLOWED_HEADERS)})")
            elif not isinstance(value, str) or "\n" in value or "\r" in value:
                errors.append(f"http_server_config.headers.{hname} must be a one-line string")
            elif value and allowed is not None and value.lower() not in allowed:
                errors.append(f"http_server_config.headers.{hname}: {value!r} invalid (accepted: "
                              f"{', '.join(sorted(allowed))})")
            elif value:
                headers.append((hname, value))

    users: list[tuple[str, bytes]] = []
    raw_users = doc.get("basic_auth_users")
    if raw_users is not None:
        if not isinstance(raw_users, dict):
            errors.append("basic_auth_users must be a mapping of user name to bcrypt hash")
            raw_users = {}
        for user, hashed in raw_users.items():
            if not isinstance(user, str) or not user or ":" in user:
                errors.append(f"basic_auth_users: invalid user name {user!r}")
            elif not isinstance(hashed, str) or not _is_bcrypt(hashed):
                errors.append(f"basic_auth_users.{user}: not a bcrypt hash (generate one with "
                              "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`)")
            else:
                users.append((user, hashed.encode()))
    excluded = str_list(doc.get("basic_auth_excluded_paths"), "basic_auth_excluded_paths")
    for p in excluded:
        if not p.startswith("/"):
            errors.append(f"basic_auth_excluded_paths: {p!r} must start with /")

    rate = None
    raw_rate = doc.get("rate_limit")
    if raw_rate is not None:
        if not isinstance(raw_rate, dict) or set(raw_rate) - {"interval", "burst"}:
            errors.append("rate_limit takes interval and burst")
        else:
            try:
                interval = _duration(raw_rate.get("interval", 0))
                burst = int(raw_rate.get("burst", 0))
            except (ValueError, TypeError) as exc:
                errors.append(f"rate_limit: {exc}")
            else:
                if interval < 0 or burst < 0 or interval != interval:
                    errors.append("rate_limit: interval and burst must not be negative")
                elif interval > 0:
                    rate = RateLimit(interval, max(1, burst))

    if errors:
        raise WebConfigError(f"{name}: " + "; ".join(errors))
    cfg = WebConfig(path, tls, tuple(headers), tuple(users), frozenset(excluded), rate, http2)
    if tls is not None and build_context:
        try:
            ctx = tls.context()
        except WebConfigError as exc:
            raise WebConfigError(f"{name}: {exc}") from None
        cfg = WebConfig(path, tls, tuple(headers), tuple(users), frozenset(excluded), rate, http2, ctx)
    return cfg


def _is_bcrypt(hashed: str) -> bool:
    parts = hashed.split("$")
    return (len(hashed) == 60 and len(parts) == 4 and parts[0] == "" and parts[1] in ("2a", "2b", "2y")
            and parts[2].isdigit() and 4 <= int(parts[2]) <= 31)


def load_web_config(path: str | Path) -> WebConfig:
    p = Path(path)
    try:
        data = read_capped(p)
    except OSError as exc:
        raise WebConfigError(f"{p}: cannot read web config: {exc.strerror or type(exc).__name__}") from None
    return parse_web_config(data, p)


def _stamp(paths: list[Path]) -> tuple[object, ...]:
    out: list[object] = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError as exc:
            out.append(exc.errno)
    return tuple(out)


class WebConfigWatcher:
    """The current WebConfig, re-read when the file or a file it names changes.

    `current()` is cheap (a time comparison) and safe to call per connection and per request.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._cfg = load_web_config(self.path) if self.path else WebConfig()
        self._stamp = self._files_stamp(self._cfg)
        self._checked = time.monotonic()
        self._failed_stamp: tuple[object, ...] | None = None
        self.reloads = 0

    def _files_stamp(self, cfg: WebConfig) -> tuple[object, ...]:
        files = [self.path] if self.path else []
        if cfg.tls is not None:
            files += cfg.tls.files()
        return _stamp(files)

    def current(self) -> WebConfig:
        if self.path is None:
            return self._cfg
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return self._cfg
        self._checked = now
        stamp = self._files_stamp(self._cfg)
        if stamp == self._stamp or stamp == self._failed_stamp:
            return self._cfg
        try:
            cfg = load_web_config(self.path)
        except WebConfigError as exc:
            self._failed_stamp = stamp
            log.error("web config changed but cannot be used, keeping the running one: %s", exc)
            return self._cfg
        self._cfg, self._stamp, self._failed_stamp = cfg, self._files_stamp(cfg), None
        self.reloads += 1
        log.info("web config reloaded from %s (tls %s, %d basic-auth users)", self.path,
                 "on" if cfg.tls else "off", len(cfg.users))
        return cfg


class BasicAuth:
    """bcrypt basic-auth check with a bounded cache of verified results.

    Why a cache: bcrypt at cost 10 costs ~70-100 ms of CPU by design; Prometheus sends the same
    credentials every scrape. The cache key is an HMAC (random per-process key) over the user,
    the presented password and the stored hash, so the password itself is never kept and a
    changed hash invalidates the entry. Unknown users are checked against a dummy hash so the
    answer time does not reveal which users exist.
    """

    MAX_ENTRIES = 1024

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()
        self._dummy: bytes | None = None
        self.bcrypt_calls = 0

    def _dummy_hash(self) -> bytes:
        if self._dummy is None:
            import bcrypt

            self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(10))
        return self._dummy

    @staticmethod
    def parse_header(value: str | None) -> tuple[str, str] | None:
        if not value or not value[:6].lower() == "basic ":
            return None
        try:
            raw = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        user, sep, password = raw.partition(":")
        return (user, password) if sep else None

    def cached(self, cfg: WebConfig, user: str, password: str) -> tuple[bytes, bool | None]:
        hashed = cfg.user_hash(user) or b"-"
        key = hmac.new(self._key, b"\0".join((user.encode(), password.encode(), hashed)), hashlib.sha256).digest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        return key, hit

    def verify(self, cfg: WebConfig, user: str, password: str) -> bool:
        """Blocking bcrypt check (run it in a thread)."""
        import bcrypt

        key, hit = self.cached(cfg, user, password)
        if hit is not None:
            return hit
        hashed = cfg.user_hash(user)
        self.bcrypt_calls += 1
        try:
            ok = bcrypt.checkpw(password.encode(), hashed or self._dummy_hash()) and hashed is not None
        except ValueError:
            ok = False
        with self._lock:
            self._cache[key] = ok
            while len(self._cache) > self.MAX_ENTRIES:
                self._cache.popitem(last=False)
        return ok


class TokenBucket:
    """exporter-toolkit's rate_limit: one token every `interval`, at most `burst` saved."""

    def __init__(self) -> None:
        self._tokens = 0.0
        self._at = time.monotonic()
        self._limit: RateLimit | None = None

    def allow(self, limit: RateLimit) -> bool:
        now = time.monotonic()
        if limit != self._limit:
            self._limit, self._tokens, self._at = limit, float(limit.burst), now
        self._tokens = min(float(limit.burst), self._tokens + (now - self._at) / limit.interval)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
