"""Configuration: YAML -> validated, typed Config, with errors that name file, line and field.

Why pydantic: it gives typed models, forbids unknown keys (typos are the most common config
bug) and reports the exact field path of each error; we map that path back to the YAML line
with PyYAML's node marks. Secrets are never in the file: only file paths or env variable
names, read by the token provider at use time (so a rotated secret file is picked up).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .clouds import CLOUDS, DEFAULT_PORTS, Cloud

Check = Literal["imap", "pop3", "smtp"]
MAIL_CHECKS: tuple[str, ...] = ("imap", "pop3", "smtp")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """'90s', '5m', '1h', '250ms' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 60s, 5m, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"invalid duration {value!r}: expected e.g. 60s, 5m, 1h")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSSettings(_Model):
    """TLS verification for one endpoint. Verification is on unless explicitly turned off."""

    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    server_name: str | None = None  # SNI / hostname to verify, when connecting by IP


class EndpointOverride(_Model):
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: TLSSettings | None = None


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
        if v is not None and not v.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return v.rstrip("/") if v else v


class DNSSettings(_Model):
    resolvers: list[str] = []  # empty: the system resolver

    @field_validator("resolvers")
    @classmethod
    def _resolvers(cls, v: list[str]) -> list[str]:
        from .probes.dns import parse_resolver  # the probe's own parser: one definition of valid

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
        if v is not None and not v.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return v.rstrip("/") if v else v

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
        return Endpoint(host=host, port=port, tls=tls, starttls=(check == "smtp"))

    def mailbox_interval(self, mailbox: Mailbox) -> float:
        return mailbox.interval or self.defaults.interval

    def mailbox_timeout(self, mailbox: Mailbox) -> float:
        return mailbox.timeout or self.defaults.timeout


@dataclass(frozen=True)
class Endpoint:
    """A resolved network endpoint; deduplicated across mailboxes for DNS/TCP/TLS checks."""

    host: str
    port: int
    tls: TLSSettings
    starttls: bool = False  # SMTP 587: TLS after EHLO/STARTTLS


# --------------------------------------------------------------------------- loading


class ConfigError(Exception):
    """A config problem, already formatted as `file:line: field: message` lines."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The deepest YAML node along `loc` (keys and list indices), for its line number."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if str(k.value) == str(part):
                    # point at the key for scalars (more readable), at the value otherwise
                    nxt = v if not isinstance(v, yaml.ScalarNode) else k
                    node_value = v
                    break
            if nxt is None:
                return node
            node = node_value if part != loc[-1] else nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def _where(path: str, root: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    node = _node_at(root, loc)
    line = node.start_mark.line + 1 if node is not None else 1
    return f"{path}:{line}"


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(text: str, path: str = "<config>") -> Config:
    """Parse and validate config text; raise ConfigError naming file, line and field."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{path}:{line}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: (top level): expected a mapping with defaults/credentials/mailboxes"])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check spelling)"
            problems.append(f"{_where(path, root, loc)}: {_field(loc)}: {msg}")
        raise ConfigError(problems) from None
    problems = [f"{_where(path, root, loc)}: {_field(loc)}: {msg}" for loc, msg in _cross_check(cfg)]
    if problems:
        raise ConfigError(problems)
    return cfg


def _cross_check(cfg: Config) -> list[tuple[tuple[Any, ...], str]]:
    """Rules that span fields: references, flow-specific requirements, duplicates."""
    out: list[tuple[tuple[Any, ...], str]] = []
    for name, c in cfg.credentials.items():
        base = ("credentials", name)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            out.append((base, "credential names may use letters, digits, '_', '.', '-'"))
        secret_sources = [c.client_secret_file, c.client_secret_env]
        if c.flow == "client_credentials":
            has_secret = any(s is not None for s in secret_sources)
            has_cert = c.private_key_file is not None or c.certificate_file is not None
            if has_secret and has_cert:
                out.append((base, "give either a client secret or a certificate, not both"))
            elif not has_secret and not has_cert:
                out.append((base, "client_credentials needs client_secret_file, client_secret_env, or "
                                  "certificate_file + private_key_file"))
            if has_cert and (c.private_key_file is None or c.certificate_file is None):
                out.append((base + ("private_key_file" if c.private_key_file is None else "certificate_file",),
                            "a certificate credential needs both certificate_file and private_key_file"))
            if sum(s is not None for s in secret_sources) > 1:
                out.append((base + ("client_secret_env",), "give only one of client_secret_file, client_secret_env"))
            for f in ("account", "token_cache"):
                if getattr(c, f) is not None:
                    out.append((base + (f,), f"{f} is only for flow: delegated"))
        else:
            if not c.account:
                out.append((base + ("flow",), "delegated flow needs account (the expected user, e.g. svc@contoso.com)"))
            if not c.token_cache:
                out.append((base + ("flow",), "delegated flow needs token_cache (a file path, created by `login`)"))
            if c.private_key_file or c.certificate_file:
                out.append((base + ("flow",), "delegated flow does not use a certificate"))
    seen: dict[str, int] = {}
    for i, m in enumerate(cfg.mailboxes):
        base = ("mailboxes", i)
        if m.credential not in cfg.credentials:
            known = ", ".join(cfg.credentials) or "none defined"
            out.append((base + ("credential",), f"unknown credential {m.credential!r} (known: {known})"))
        if not m.checks:
            out.append((base + ("checks",), "list at least one of imap, pop3, smtp"))
        if len(set(m.checks)) != len(m.checks):
            out.append((base + ("checks",), "duplicate check"))
        if m.label in seen:
            out.append((base + ("address",), f"duplicate mailbox {m.label!r} (also mailboxes[{seen[m.label]}]); "
                                             "give one a distinct name"))
        seen.setdefault(m.label, i)
    return out


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read config: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: config is not UTF-8 text"]) from None
    return parse_config(text, str(p))
