"""Configuration: YAML -> validated, typed Config, with errors that name file, line and field.

Why pydantic: it gives typed models, forbids unknown keys (typos are the most common config
bug) and reports the exact field path of each error; we map that path back to the YAML line
with PyYAML's node marks. Secrets are never in the file: only file paths or env variable
names, read by the token provider at use time (so a rotated secret file is picked up).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .clouds import CLOUDS, DEFAULT_PORTS, Cloud
from .hostnames import check_host, check_proxy_url, check_url_host
from .resolvers import parse_resolver
from .yamlload import Document, YAMLProblem, load_document

Check = Literal["imap", "pop3", "smtp"]
MAIL_CHECKS: tuple[str, ...] = ("imap", "pop3", "smtp")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


MAX_DURATION = 7 * 86400.0  # no interval or timeout is longer than a week


def parse_duration(value: Any) -> float:
    """'90s', '5m', '1h', '250ms' or a number of seconds -> seconds (finite, positive, <= 7d)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 60s, 5m, 1h")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range
            raise ValueError("duration must be at most 7d") from None
        if not math.isfinite(seconds):
            raise ValueError("duration must be a finite number of seconds (not .nan/.inf)")
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"invalid duration {value!r}: expected e.g. 60s, 5m, 1h")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError("duration must be positive")
    if seconds > MAX_DURATION:
        raise ValueError("duration must be at most 7d")
    return seconds


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSSettings(_Model):
    """TLS verification for one endpoint. Verification is on unless explicitly turned off."""

    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    server_name: str | None = None  # SNI / hostname to verify, when connecting by IP

    _sn = field_validator("server_name")(classmethod(lambda cls, v: None if v is None else check_host(v)))


class EndpointOverride(_Model):
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: TLSSettings | None = None

    # an empty host must not silently fall back to the cloud's (Microsoft's) host
    _h = field_validator("host")(classmethod(lambda cls, v: None if v is None else check_host(v)))


class Endpoints(_Model):
    imap: EndpointOverride = EndpointOverride()
    pop3: EndpointOverride = EndpointOverride()
    smtp: EndpointOverride = EndpointOverride()


class HTTPSSettings(_Model):
    """How to reach the identity platform and Microsoft Graph."""

    authority_host: str | None = None  # e.g. https://login.microsoftonline.com; default from cloud
    graph_url: str | None = None  # default from cloud
    ca_file: Path | None = None  # CA bundle for HTTPS (a TLS-intercepting proxy's CA)
    proxy: str | None = None  # http://proxy:3128 for HTTPS CONNECT

    @field_validator("authority_host", "graph_url")
    @classmethod
    def _https(cls, v: str | None) -> str | None:
        return None if v is None else check_url_host(v)

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        return None if v is None else check_proxy_url(v)


class DNSSettings(_Model):
    resolvers: list[str] = []  # empty: the system resolver

    @field_validator("resolvers")
    @classmethod
    def _resolvers(cls, v: list[str]) -> list[str]:
        for spec in v:
            parse_resolver(spec)
        return v


class Defaults(_Model):
    interval: float = 60.0  # mail and network probes
    token_interval: float = 60.0  # forced token refresh per credential: pages within 5 min (docs/alerts.md)
    timeout: float = 15.0  # per probe
    cloud: str = "global"
    concurrency: int = Field(default=32, ge=1, le=4096)
    endpoints: Endpoints = Endpoints()
    tls: TLSSettings = TLSSettings()
    https: HTTPSSettings = HTTPSSettings()
    dns: DNSSettings = DNSSettings()
    network_checks: bool = True  # DNS/TCP/TLS per unique endpoint

    _d = field_validator("interval", "token_interval", "timeout", mode="before")(
        classmethod(lambda cls, v: parse_duration(v))
    )

    @field_validator("cloud")
    @classmethod
    def _cloud(cls, v: str) -> str:
        if v not in CLOUDS:
            raise ValueError(f"unknown cloud {v!r}; one of {', '.join(CLOUDS)}")
        return v


class Credential(_Model):
    tenant_id: str
    client_id: str
    flow: Literal["client_credentials", "delegated"] = "client_credentials"
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    certificate_file: Path | None = None  # PEM public certificate (for thumbprint / x5c)
    private_key_file: Path | None = None  # PEM private key
    private_key_password_env: str | None = None
    account: str | None = None  # delegated: the expected user (UPN)
    token_cache: Path | None = None  # delegated: persistent MSAL cache file (0600)
    cloud: str | None = None
    authority_host: str | None = None
    scopes: list[str] | None = None  # override requested scopes
    secret_expiry: datetime | None = None  # declared expiry when Graph audit is not available
    graph_audit: bool = False  # read secret/cert expiry from Microsoft Graph (Application.Read.All)
    app_external_url: str | None = None  # consuming app's URL: check redirect URIs match it

    @field_validator("cloud")
    @classmethod
    def _cloud(cls, v: str | None) -> str | None:
        if v is not None and v not in CLOUDS:
            raise ValueError(f"unknown cloud {v!r}; one of {', '.join(CLOUDS)}")
        return v

    @field_validator("authority_host")
    @classmethod
    def _https(cls, v: str | None) -> str | None:
        return None if v is None else check_url_host(v)

    @property
    def auth_kind(self) -> str:
        """secret | certificate | refresh_token (for m365_credential_info{auth})."""
        if self.flow == "delegated":
            return "refresh_token"
        return "certificate" if self.private_key_file else "secret"


class Mailbox(_Model):
    address: str
    credential: str
    checks: list[Check] = ["imap", "smtp"]
    name: str | None = None  # label value; defaults to the address
    interval: float | None = None
    timeout: float | None = None
    endpoints: Endpoints = Endpoints()

    _d = field_validator("interval", "timeout", mode="before")(
        classmethod(lambda cls, v: None if v is None else parse_duration(v))
    )

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str) -> str:
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", v):
            raise ValueError(f"{v!r} is not an email address")
        return v

    @property
    def label(self) -> str:
        return self.name or self.address


class Config(_Model):
    defaults: Defaults = Defaults()
    credentials: dict[str, Credential] = {}
    mailboxes: list[Mailbox] = []
    # waives the interval minimums and the timeout-below-interval rule: demo and tests only
    unsafe_allow_short_intervals: bool = False

    @model_validator(mode="after")
    def _timing(self, info: ValidationInfo) -> Config:
        if not (info.context or {}).get("skip_cross_checks"):  # parse_config reports these itself
            problems = timing_problems(self)
            if problems:
                raise ValueError("; ".join(f"{_field(loc)}: {msg}" for loc, msg in problems))
        return self

    def find_mailbox(self, name: str) -> Mailbox | None:
        """A mailbox by its label, else by address (case-insensitive, as email addresses are)."""
        return next((m for m in self.mailboxes if m.label == name), None) or next(
            (m for m in self.mailboxes if m.address.lower() == name.lower()), None)

    def credential_for(self, mailbox: Mailbox) -> Credential:
        return self.credentials[mailbox.credential]

    def cloud_for(self, cred: Credential) -> Cloud:
        return CLOUDS[cred.cloud or self.defaults.cloud]

    def authority_host(self, cred: Credential) -> str:
        return cred.authority_host or self.defaults.https.authority_host or self.cloud_for(cred).authority_host

    def graph_url(self, cred: Credential) -> str:
        return self.defaults.https.graph_url or self.cloud_for(cred).graph_url

    def endpoint_for(self, mailbox: Mailbox, check: str) -> Endpoint:
        """Effective host/port/TLS for a mailbox's check: mailbox > defaults > cloud."""
        own: EndpointOverride = getattr(mailbox.endpoints, check)
        dflt: EndpointOverride = getattr(self.defaults.endpoints, check)
        cloud = self.cloud_for(self.credential_for(mailbox))
        host = own.host or dflt.host or getattr(cloud, f"{check}_host")
        port = own.port or dflt.port or DEFAULT_PORTS[check]
        tls = own.tls or dflt.tls or self.defaults.tls
        ep = Endpoint(host=host, port=port, tls=tls, starttls=(check == "smtp"),
                      resolvers=tuple(self.defaults.dns.resolvers))
        if len(_ENDPOINTS) >= _ENDPOINTS_MAX:
            _ENDPOINTS.clear()
        return _ENDPOINTS.setdefault(ep, ep)

    def mailbox_interval(self, mailbox: Mailbox) -> float:
        return mailbox.interval or self.defaults.interval

    def mailbox_timeout(self, mailbox: Mailbox) -> float:
        return mailbox.timeout or self.defaults.timeout


_ENDPOINTS: dict[Endpoint, Endpoint] = {}  # one object per distinct endpoint (few): see Endpoint
_ENDPOINTS_MAX = 65536  # interning only saves memory: past this (endless reloads of new hosts) start over


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A resolved network endpoint; deduplicated across mailboxes for DNS/TCP/TLS checks.

    Interned by `Config.endpoint_for`: every mail job's signature holds its endpoint, and the
    thousands of mailboxes of a tenant share a handful of them."""

    host: str
    port: int
    tls: TLSSettings
    starttls: bool = False  # SMTP 587: TLS after EHLO/STARTTLS
    resolvers: tuple[str, ...] = ()  # defaults.dns.resolvers: empty = the system resolver


# --------------------------------------------------------------------------- loading


class ConfigError(Exception):
    """A config problem, already formatted as `file:line: field: message` lines."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


MAX_CONFIG_BYTES = 16 * 1024 * 1024  # ~200,000 mailboxes (one config shared by all shards); more is a mistake

# Minimums that protect Microsoft's endpoints (and the tenant's throttling budget) from a typo;
# `unsafe_allow_short_intervals: true` waives them (and timeout < interval) for the demo/tests.
MIN_INTERVAL = 30.0
MIN_TOKEN_INTERVAL = 60.0
MIN_TIMEOUT = 1.0
# floors that hold even with the override: nothing probes more often than this
FLOOR_INTERVAL = 1.0
FLOOR_TIMEOUT = 0.1


def parse_config(text: str, path: str = "<config>") -> Config:
    """Parse and validate config text in one pass; raise ConfigError listing every problem
    (YAML, duplicate keys, fields, cross-references, timing), each as file:line: field: message."""
    if not text.strip():
        raise ConfigError([f"{path}:1: the config file is empty (a truncated write?): refusing it"])
    try:
        doc = load_document(text)
    except YAMLProblem as exc:
        raise ConfigError([f"{path}:{exc.line}: invalid YAML: {exc.message}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{path}:{line}: invalid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    data = doc.data
    if data is None:
        raise ConfigError([f"{path}:1: the config has no settings (only comments?): refusing it"])
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: (top level): expected a mapping with defaults/credentials/mailboxes"])
    found: list[tuple[int, str]] = [(line, f"{_field(loc)}: duplicate key (the later one would win silently)")
                                    for loc, line in doc.duplicates]
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(data, context={"skip_cross_checks": True})
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check spelling)"
            found.append((_line(doc, loc), f"{_field(loc)}: {msg}"))
    found += [(_line(doc, loc), f"{_field(loc)}: {msg}") for loc, msg in _cross_check_raw(data)]
    if cfg is not None:
        found += [(_line(doc, loc), f"{_field(loc)}: {msg}") for loc, msg in timing_problems(cfg)]
    if found or cfg is None:
        seen: set[str] = set()
        problems = []
        for line, msg in sorted(found, key=lambda p: p[0]):
            text_ = f"{path}:{line}: {msg}"
            if text_ not in seen:
                seen.add(text_)
                problems.append(text_)
        raise ConfigError(problems or [f"{path}:1: invalid config"])
    return cfg


def _line(doc: Document, loc: tuple[Any, ...]) -> int:
    return doc.line_of(loc)


def timing_problems(cfg: Config) -> list[tuple[tuple[Any, ...], str]]:
    """Durations that would hurt Microsoft's endpoints or cannot work (see MIN_* above)."""
    out: list[tuple[tuple[Any, ...], str]] = []
    d = cfg.defaults
    unsafe = cfg.unsafe_allow_short_intervals
    hint = " (unsafe_allow_short_intervals: true waives this for demos and tests)"

    def minimum(loc: tuple[Any, ...], value: float, floor: float, safe: float) -> None:
        if value < floor:
            out.append((loc, f"must be at least {floor:g}s"))
        elif not unsafe and value < safe:
            out.append((loc, f"must be at least {safe:g}s to protect Microsoft's endpoints{hint}"))

    minimum(("defaults", "interval"), d.interval, FLOOR_INTERVAL, MIN_INTERVAL)
    minimum(("defaults", "token_interval"), d.token_interval, FLOOR_INTERVAL, MIN_TOKEN_INTERVAL)
    minimum(("defaults", "timeout"), d.timeout, FLOOR_TIMEOUT, MIN_TIMEOUT)
    if not unsafe:
        if d.timeout >= d.interval:
            out.append((("defaults", "timeout"), f"must be below interval ({d.interval:g}s){hint}"))
        if d.timeout >= d.token_interval:
            out.append((("defaults", "timeout"), f"must be below token_interval ({d.token_interval:g}s){hint}"))
    for i, m in enumerate(cfg.mailboxes):
        if m.interval is not None:
            minimum(("mailboxes", i, "interval"), m.interval, FLOOR_INTERVAL, MIN_INTERVAL)
        if m.timeout is not None:
            minimum(("mailboxes", i, "timeout"), m.timeout, FLOOR_TIMEOUT, MIN_TIMEOUT)
        if (m.interval is not None or m.timeout is not None) and not unsafe:
            if cfg.mailbox_timeout(m) >= cfg.mailbox_interval(m):
                out.append((("mailboxes", i, "timeout"),
                            f"must be below the mailbox's interval ({cfg.mailbox_interval(m):g}s){hint}"))
    return out


def _cross_check_raw(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Rules that span fields (references, flow-specific requirements, duplicates), on the raw
    data so they are reported together with field errors, in one pass."""
    out: list[tuple[tuple[Any, ...], str]] = []
    creds = data.get("credentials")
    creds = creds if isinstance(creds, dict) else {}
    for name, c in creds.items():
        base = ("credentials", name)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
            out.append((base, "credential names may use letters, digits, '_', '.', '-'"))
        if not isinstance(c, dict):
            continue
        given = lambda f, c=c: c.get(f) is not None  # noqa: E731
        secret_sources = [f for f in ("client_secret_file", "client_secret_env") if given(f)]
        if c.get("flow", "client_credentials") != "delegated":
            has_secret = bool(secret_sources)
            has_cert = given("private_key_file") or given("certificate_file")
            if has_secret and has_cert:
                out.append((base, "give either a client secret or a certificate, not both"))
            elif not has_secret and not has_cert:
                out.append((base, "client_credentials needs client_secret_file, client_secret_env, or "
                                  "certificate_file + private_key_file"))
            if has_cert and not (given("private_key_file") and given("certificate_file")):
                out.append((base + ("certificate_file" if given("private_key_file") else "private_key_file",),
                            "a certificate credential needs both certificate_file and private_key_file"))
            if len(secret_sources) > 1:
                out.append((base + ("client_secret_env",), "give only one of client_secret_file, client_secret_env"))
            for f in ("account", "token_cache"):
                if given(f):
                    out.append((base + (f,), f"{f} is only for flow: delegated"))
        else:
            if not c.get("account"):
                out.append((base + ("flow",), "delegated flow needs account (the expected user, e.g. svc@contoso.com)"))
            if not c.get("token_cache"):
                out.append((base + ("flow",), "delegated flow needs token_cache (a file path, created by `login`)"))
            if given("private_key_file") or given("certificate_file"):
                out.append((base + ("flow",), "delegated flow does not use a certificate"))
    mailboxes = data.get("mailboxes")
    seen_label: dict[str, int] = {}
    seen_addr: dict[str, int] = {}
    for i, m in enumerate(mailboxes if isinstance(mailboxes, list) else []):
        if not isinstance(m, dict):
            continue
        base = ("mailboxes", i)
        cred = m.get("credential")
        if cred is not None and cred not in creds:
            known = ", ".join(map(str, creds)) or "none defined"
            out.append((base + ("credential",), f"unknown credential {cred!r} (known: {known})"))
        checks = m.get("checks", ["imap", "smtp"])
        if isinstance(checks, list):
            if not checks:
                out.append((base + ("checks",), "list at least one of imap, pop3, smtp"))
            if len(set(map(str, checks))) != len(checks):
                out.append((base + ("checks",), "duplicate check"))
        address = str(m.get("address", ""))
        label = str(m.get("name") or address)
        if label in seen_label:
            out.append((base + ("address",), f"duplicate mailbox {label!r} (also mailboxes[{seen_label[label]}]); "
                                             "give one a distinct name"))
        elif address and address.lower() in seen_addr and not m.get("name"):
            out.append((base + ("address",), f"mailbox {address!r} is already mailboxes[{seen_addr[address.lower()]}] "
                                             "(addresses are case-insensitive); give one a distinct name"))
        seen_label.setdefault(label, i)
        if address:
            seen_addr.setdefault(address.lower(), i)
    return out


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file. Every failure is a ConfigError naming the file:
    missing, a directory, unreadable, larger than MAX_CONFIG_BYTES, not UTF-8, empty, invalid,
    or anything else going wrong while loading (never a traceback, never a half config)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > MAX_CONFIG_BYTES:
                raise ConfigError([f"{p}: config is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB: refusing it"])
            raw = fh.read(MAX_CONFIG_BYTES + 1)  # a file growing while read is still bounded
    except IsADirectoryError:
        raise ConfigError([f"{p}: is a directory, not a config file"]) from None
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read config: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{p}: config is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB: refusing it"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{p}:{line}: config is not UTF-8 text"]) from None
    try:
        return parse_config(text, str(p))
    except ConfigError:
        raise
    except Exception as exc:  # RecursionError, MemoryError, a bug: still a config error, still named
        raise ConfigError([f"{p}: cannot load config: {type(exc).__name__}: {exc}"]) from None
