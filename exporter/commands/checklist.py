"""The troubleshooting checklist behind `m365-mail-exporter check`: what runs, in which order, and
what each line says. Rendering (text, colour, JSON) is in check.py.

Why a checklist rather than "run the probes": when mail stops, the operator needs the *first*
broken link in the chain from this host to Microsoft, in the order they depend on each other:
name resolution, the TCP path (firewalls), TLS (interception proxies, expired certificates),
token acquisition (secrets, consent, refresh tokens, identity), the mail protocol logins, and
finally the app registration itself. Every line is produced by the same code the exporter runs in
the background (Runtime.run_endpoint_probe / run_token_probe / run_mail_probe and the Graph audit
hook), so `check` and the metrics can never disagree about what is wrong.

All checks start at once (bounded by `defaults.concurrency`) and are yielded in checklist order as
soon as each line and all lines before it are done, so a slow SMTP server does not hide a DNS
failure that has already been found.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..audit import AUDIT_ADVICE, audit_hook
from ..certexpiry import read_certificate_expiry
from ..config import Config, Endpoint, Mailbox
from ..facts import (
    DISPLAY_NAME,
    KEY_NAME_PREFIX,
    KEY_TYPE_PREFIX,
    MESSAGES,
    REDIRECT_MATCH,
    REDIRECT_URIS,
    SECRET_PREFIX,
    TOKEN_EXPIRY,
)
from ..fixes import login_endpoint
from ..probes.result import ProbeResult
from ..reasons import Reason
from ..redact import redact
from ..runtime import MailTarget, Runtime

STAGES: tuple[str, ...] = ("dns", "tcp", "tls", "token", "imap", "pop3", "smtp", "audit")
STAGE_TITLES = {
    "dns": "DNS", "tcp": "TCP", "tls": "TLS", "token": "Token acquisition", "imap": "IMAP login",
    "pop3": "POP3 login", "smtp": "SMTP login", "audit": "App registration",
}
REDIRECT_SUMMARY = "the consuming application's URL is not among the app registration's redirect URIs"
# Match alerts/config.yml's M365ClientSecretExpiringSoon (warning_days 30, critical_days 7): `check`
# warns exactly when the shipped alert is pending or firing, so the two never disagree.
SECRET_WARNING_DAYS = 30
SECRET_CRITICAL_DAYS = 7


@dataclass
class CheckLine:
    """One line of the checklist (also one element of `--output json`'s `checks`)."""

    stage: str
    target: str
    ok: bool
    reason: Reason | None = None
    detail: str = ""
    duration: float = 0.0
    facts: dict[str, float | str] = field(default_factory=dict)
    skipped: bool = False  # not reached: an earlier stage of the same path failed (reason is that stage's)
    summary_text: str | None = None  # overrides the reason's catalogue summary (audit-specific words)
    fix_text: str | None = None  # overrides the reason's catalogue fix
    label: str = ""  # what the target is used for (e.g. "imap", "smtp", "identity platform"), text output only
    warning: str = ""  # passed, but needs attention soon (e.g. a secret expiring within 30 days): [WARN]
    credential: str = ""  # the credential this line depends on (token, mail and audit lines)
    endpoint: str = ""  # the host:port this line depends on (tcp, tls and mail lines; host for dns)
    host: str = ""
    port: int | None = None

    @property
    def summary(self) -> str | None:
        if self.summary_text is not None:
            return self.summary_text
        return self.reason.summary if self.reason is not None and not self.ok else None

    @property
    def fix(self) -> str | None:
        if self.fix_text is not None:
            return self.fix_text
        if self.reason is None or self.ok:
            return None
        mailbox = self.target if self.stage in ("imap", "pop3", "smtp") else None
        return self.reason.fix_for(mailbox=mailbox, credential=self.credential or None, host=self.host or None,
                                   port=self.port)

    @property
    def failed(self) -> bool:
        return not self.ok and not self.skipped

    @property
    def cause(self) -> tuple[str, str]:
        """The root cause this line belongs to: (reason or summary, credential or endpoint).
        Credential reasons group by credential, network reasons by endpoint, mail reasons by the
        credential whose identity the mail server refused (one fix for all its mailboxes)."""
        what = self.reason.value if self.reason is not None else (self.summary or self.stage)
        if self.reason is not None and self.reason.info.category.value == "network":
            where = self.host if self.reason.value.startswith("dns_") else (self.endpoint or self.host)
            return what, f"endpoint {where or self.target}"
        if self.credential:
            return what, f"credential {self.credential}"
        return what, f"{self.stage} {self.target}"

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "target": self.target,
            "ok": self.ok,
            "reason": self.reason.value if self.reason is not None and not self.ok else None,
            "summary": self.summary,
            "fix": self.fix,
            "detail": redact(self.detail),
            "duration_seconds": round(self.duration, 6),
            "facts": {k: v for k, v in sorted(self.facts.items())},
            "skipped": self.skipped,
            "warning": self.warning or None,
        }


def _ms(seconds: Any) -> str:
    return f"{float(seconds) * 1000:.0f} ms" if isinstance(seconds, int | float) else "?"


def _when(ts: float, now: float | None = None) -> str:
    """'2026-08-01 (in 21 days)' / '(EXPIRED 3 days ago)' / '(in 42 min)'."""
    now = time.time() if now is None else now
    day = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
    left = ts - now
    if left < 0:
        return f"{day} (EXPIRED {(-left) / 86400:.0f} days ago)"
    if left < 2 * 86400:
        return f"{datetime.fromtimestamp(ts, UTC).strftime('%Y-%m-%d %H:%M UTC')} (in {left / 60:.0f} min)"
    return f"{day} (in {left / 86400:.0f} days)"


def expiry_warning(expiry: float, now: float | None = None) -> str:
    """'' or what the shipped M365ClientSecretExpiringSoon alert says about this expiry."""
    now = time.time() if now is None else now
    left = expiry - now
    if left <= 0 or left > SECRET_WARNING_DAYS * 86400:
        return ""
    level = "critical" if left <= SECRET_CRITICAL_DAYS * 86400 else "warning"
    return f"expires {_when(expiry, now)}: M365ClientSecretExpiringSoon ({level}) is due; rotate it before then"


def select_mailbox(config: Config, mailbox: str) -> Config:
    """The config reduced to one mailbox (by name or address), its credential and so its endpoints."""
    m = config.find_mailbox(mailbox)
    if m is None:
        known = ", ".join(x.label for x in config.mailboxes) or "none configured"
        raise KeyError(f"unknown mailbox {mailbox!r} (configured: {known})")
    return config.model_copy(update={"mailboxes": [m], "credentials": {m.credential: config.credentials[m.credential]}})


# ------------------------------------------------------------------ result -> lines


def endpoint_lines(ep: Endpoint, res: ProbeResult, used_for: str = "") -> tuple[CheckLine, CheckLine, CheckLine]:
    """DNS, TCP and TLS lines from one endpoint probe (it walks the path in that order)."""
    lines = _endpoint_lines(ep, res)
    for line in lines:
        line.host, line.port, line.endpoint = ep.host, ep.port, f"{ep.host}:{ep.port}"
    lines[0].port = None
    for line in lines[1:]:
        line.label = used_for
        if used_for:
            line.facts["used_for"] = used_for
    return lines


def _endpoint_lines(ep: Endpoint, res: ProbeResult) -> tuple[CheckLine, CheckLine, CheckLine]:
    f = res.facts
    hp = f"{ep.host}:{ep.port}"
    facts_dns = {k: v for k, v in f.items() if k.startswith("dns_")}
    if "dns_success" in f:
        ok = f["dns_success"] == 1.0
        detail = (f"{int(float(f.get('dns_addresses', 0)))} address(es) in {_ms(f.get('dns_duration'))}" if ok
                  else res.detail)
        dns = CheckLine("dns", ep.host, ok, None if ok else res.reason, detail, float(f.get("dns_duration", 0.0)),
                        facts_dns)
    else:  # an IP literal: nothing to resolve
        dns = CheckLine("dns", ep.host, True, detail="IP address, no lookup needed")
    if not dns.ok:
        skip = f"not reached: DNS lookup of {ep.host} failed"
        return (dns, CheckLine("tcp", hp, False, dns.reason, skip, skipped=True),
                CheckLine("tls", hp, False, dns.reason, skip, skipped=True))
    tcp_ok = f.get("tcp_success") == 1.0
    tcp_facts = {k: v for k, v in f.items() if k.startswith("tcp_")}
    tcp = CheckLine("tcp", hp, tcp_ok, None if tcp_ok else res.reason,
                    f"connected in {_ms(f.get('tcp_duration'))}" if tcp_ok else res.detail,
                    float(f.get("tcp_duration", 0.0)), tcp_facts)
    if not tcp_ok:
        return dns, tcp, CheckLine("tls", hp, False, res.reason, f"not reached: TCP connection to {hp} failed",
                                   skipped=True)
    tls_facts = {k: v for k, v in f.items() if k.startswith("tls_")}
    parts: list[str] = []
    if isinstance(f.get("tls_version"), str):
        parts.append(str(f["tls_version"]))
    if ep.starttls:
        parts.append("after STARTTLS")
    if res.success:
        if ep.tls.insecure_skip_verify:
            parts.append("certificate NOT verified (insecure_skip_verify)")
        else:
            parts.append(f"chain verified, hostname {ep.tls.server_name or ep.host} matches")
    else:
        parts.append(res.detail)
    if isinstance(f.get("tls_cert_expiry"), int | float):
        parts.append("earliest certificate expiry " + _when(float(f["tls_cert_expiry"])))
    tls = CheckLine("tls", hp, res.success, res.reason, ", ".join(p for p in parts if p),
                    float(f.get("tls_duration", 0.0)), tls_facts)
    return dns, tcp, tls


def token_line(rt: Runtime, name: str, res: ProbeResult) -> CheckLine:
    cred = rt.config.credentials[name]
    provider = rt.providers.get(name)
    facts: dict[str, float | str] = dict(res.facts)
    facts.update(flow=cred.flow, auth=cred.auth_kind)
    how = f"{cred.flow} ({cred.auth_kind})"
    host, port = login_endpoint(rt.config, name)
    where = dict(credential=name, host=host or "", port=port, endpoint=f"{host}:{port}" if host else "")
    if not res.success:
        return CheckLine("token", name, False, res.reason, f"{how}: {res.detail}", res.duration, facts, **where)
    tok = provider.current if provider is not None else None
    parts = [how]
    if tok is not None:
        who = tok.identity or (f"app {tok.claims.get('appid')}" if tok.claims.get("appid") else None)
        if who:
            facts["identity"] = who
            parts.append(f"identity {who}")
        if tok.permissions:
            perms = " ".join(sorted(tok.permissions))
            facts["permissions"] = perms
            parts.append(("scopes " if cred.flow == "delegated" else "roles ") + perms)
        elif not tok.claims:
            parts.append("opaque token (identity and permissions not readable)")
    if isinstance(facts.get(TOKEN_EXPIRY), int | float):
        parts.append("expires " + _when(float(facts[TOKEN_EXPIRY])))
    return CheckLine("token", name, True, None, "; ".join(parts), res.duration, facts, **where)


def mail_line(m: Mailbox, check: str, res: ProbeResult, ep: Endpoint | None = None) -> CheckLine:
    where: dict[str, Any] = {"credential": m.credential}
    if ep is not None:
        where.update(host=ep.host, port=ep.port, endpoint=f"{ep.host}:{ep.port}")
    if not res.success:
        return CheckLine(check, m.label, False, res.reason, res.detail, res.duration, dict(res.facts), **where)
    if check == "smtp":
        detail = "EHLO, STARTTLS, AUTH XOAUTH2 accepted (no mail sent)"
    else:
        n = res.facts.get(MESSAGES)
        what = "AUTHENTICATE XOAUTH2 + EXAMINE INBOX" if check == "imap" else "AUTH XOAUTH2 + STAT"
        count = int(float(n)) if isinstance(n, int | float) else None
        detail = what + (f": {count} message{'' if count == 1 else 's'}" if count is not None else " ok")
    return CheckLine(check, m.label, True, None, res.detail or detail, res.duration, dict(res.facts), **where)


def audit_lines(rt: Runtime, name: str, res: ProbeResult) -> list[CheckLine]:
    cred = rt.config.credentials[name]
    f = res.facts
    secrets = {k[len(SECRET_PREFIX):]: float(v) for k, v in f.items()
               if k.startswith(SECRET_PREFIX) and isinstance(v, int | float)}
    public = {k: v for k, v in f.items() if k.startswith((SECRET_PREFIX, REDIRECT_MATCH, DISPLAY_NAME))}
    target = f"{name} (Graph)"
    if not res.success:
        summary, fix = AUDIT_ADVICE.get(res.reason or Reason.UNKNOWN, (None, None))
        detail = res.detail
        if secrets:
            detail += f" (last known expiries still exported: {len(secrets)})"
        return [CheckLine("audit", target, False, res.reason, detail, res.duration, public, summary_text=summary,
                          fix_text=fix, credential=name)]
    parts = []
    if isinstance(f.get(DISPLAY_NAME), str):
        parts.append(f"app '{f[DISPLAY_NAME]}'")
    now = time.time()
    for key_id, expiry in sorted(secrets.items(), key=lambda kv: kv[1]):
        kind = f.get(KEY_TYPE_PREFIX + key_id, "credential")
        label = f.get(KEY_NAME_PREFIX + key_id)
        parts.append(f"{kind} {label + ' ' if label else ''}[{key_id}] expires {_when(expiry, now)}")
    if not secrets:
        parts.append("no client secrets or certificates registered")
    lines: list[CheckLine] = []
    if secrets and max(secrets.values()) < now:
        lines.append(CheckLine("audit", target, False, Reason.SECRET_EXPIRED, "; ".join(parts), res.duration, public,
                               credential=name))
    else:
        # the alert fires per key_id: warn for the soonest one still valid
        valid = sorted(v for v in secrets.values() if v > now)
        warn = expiry_warning(valid[0], now) if valid else ""
        lines.append(CheckLine("audit", target, True, None, "; ".join(parts), res.duration, public, warning=warn,
                               credential=name))
    if cred.app_external_url and REDIRECT_MATCH in f:
        ok = f[REDIRECT_MATCH] == 1.0
        found = str(f.get(REDIRECT_URIS) or "none")
        detail = (f"{cred.app_external_url} is a redirect URI" if ok
                  else f"{cred.app_external_url} is not among the web redirect URIs ({found})")
        lines.append(CheckLine(
            "audit", f"{name} (redirect URI)", ok, None, detail, 0.0, {REDIRECT_MATCH: f[REDIRECT_MATCH]},
            credential=name,
            summary_text=None if ok else REDIRECT_SUMMARY,
            fix_text=None if ok else (f"Add {cred.app_external_url} (the consuming application's OAuth callback "
                                      "URL under it) as a Web redirect URI in Entra ID > App registrations > "
                                      "Authentication, or fix app_external_url in the config."),
        ))
    return lines


def declared_line(name: str, expiry: float) -> CheckLine:
    ok = expiry > time.time()
    return CheckLine("audit", f"{name} (declared)", ok, None if ok else Reason.SECRET_EXPIRED,
                     f"secret_expiry declared in the config: {_when(expiry)}", 0.0,
                     {SECRET_PREFIX + "declared": expiry}, warning=expiry_warning(expiry), credential=name)


def certificate_line(name: str, path: str) -> CheckLine:
    """The configured certificate file's own notAfter (exported as its thumbprint's expiry)."""
    own = read_certificate_expiry(path)
    target = f"{name} (certificate file)"
    if own is None:
        return CheckLine("audit", target, False, Reason.CREDENTIAL_UNREADABLE, f"cannot read a certificate in {path}",
                         credential=name)
    ok = own.not_after > time.time()
    return CheckLine("audit", target, ok, None if ok else Reason.CERTIFICATE_EXPIRED,
                     f"certificate [{own.thumbprint}] expires {_when(own.not_after)}", 0.0,
                     {SECRET_PREFIX + own.thumbprint: own.not_after}, warning=expiry_warning(own.not_after),
                     credential=name)


def skip_if_upstream_failed(line: CheckLine, upstream: list[tuple[ProbeResult, str]]) -> CheckLine:
    """A mail line that failed for the same reason as an earlier stage of its path (the endpoint's
    DNS/TCP/TLS, the credential's token) was not reached: [SKIP] with that stage's reason, as the
    docs say, so the root cause is reported once, where it happened. `upstream` is in path order:
    (result, what it was) pairs."""
    if line.ok or line.reason is None:
        return line
    for res, what in upstream:
        if res.success or res.reason is None:
            continue
        if res.reason is line.reason or (what.startswith("token") and line.detail.startswith("no token")):
            line.skipped, line.reason = True, res.reason
            line.detail = f"not reached: {what} failed"
            return line
    return line


# ------------------------------------------------------------------ running


Producer = Callable[[], Awaitable[list[CheckLine]]]


class Checklist:
    """Runs every check once through a Runtime whose scheduler never runs.

    Usage: `async with Checklist(config) as cl: async for line in cl.lines(): ...`
    """

    def __init__(self, config: Config, mailbox: str | None = None) -> None:
        self.config = select_mailbox(config, mailbox) if mailbox else config
        self.rt: Runtime | None = None
        self._slots: list[tuple[str, str, asyncio.Future[list[CheckLine]]]] = []
        self._shared: list[asyncio.Future[ProbeResult]] = []  # probes several lines read from
        self._sem = asyncio.Semaphore(self.config.defaults.concurrency)
        self.done = 0
        self.waiting_for = ""

    @property
    def total(self) -> int:
        return len(self._slots)

    async def __aenter__(self) -> Checklist:
        rt = Runtime(self.config)
        rt.apply(self.config)
        await rt.scheduler.stop()  # nothing runs on a schedule: every check below runs exactly once
        self.rt = rt
        self._plan(rt)
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks: list[asyncio.Future[Any]] = [*self._shared, *(t for _, _, t in self._slots)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.rt is not None:
            await self.rt.stop()

    def _guard(self) -> float:
        """Backstop per check: every probe bounds itself; this only catches a bug."""
        d = self.config.defaults
        longest = max([d.timeout, *(self.config.mailbox_timeout(m) for m in self.config.mailboxes)])
        return 3 * longest + 5.0

    async def _bounded(self, fn: Callable[[], Awaitable[ProbeResult]]) -> ProbeResult:
        t0 = time.monotonic()
        try:
            async with self._sem, asyncio.timeout(self._guard()):
                return await fn()
        except TimeoutError:
            return ProbeResult.fail(Reason.TIMEOUT, time.monotonic() - t0, "check did not finish in time")
        except Exception as exc:  # a bug must not lose the rest of the checklist
            return ProbeResult.fail(Reason.UNKNOWN, time.monotonic() - t0, f"{type(exc).__name__}: {exc}")

    def _add(self, stage: str, target: str, producer: Producer) -> None:
        self._slots.append((stage, target, asyncio.ensure_future(producer())))

    def _start(self, fn: Callable[[], Awaitable[ProbeResult]]) -> asyncio.Future[ProbeResult]:
        task = asyncio.ensure_future(self._bounded(fn))
        self._shared.append(task)
        return task

    def _plan(self, rt: Runtime) -> None:
        config = self.config
        endpoints = list(rt.unique_endpoints(config).values())
        used_for: dict[tuple[str, int], list[str]] = {}
        for m in config.mailboxes:
            for check in m.checks:
                ep = config.endpoint_for(m, check)
                roles = used_for.setdefault((ep.host, ep.port), [])
                if check not in roles:
                    roles.append(check)
        for ep in endpoints:
            used_for.setdefault((ep.host, ep.port), ["identity platform"])
        ep_tasks = {ep: self._start(lambda ep=ep: rt.run_endpoint_probe(ep)) for ep in endpoints}

        def from_endpoint(ep: Endpoint, index: int) -> Producer:
            async def produce() -> list[CheckLine]:
                label = ", ".join(used_for.get((ep.host, ep.port), []))
                return [endpoint_lines(ep, await ep_tasks[ep], label)[index]]
            return produce

        seen_hosts: set[str] = set()
        for ep in endpoints:
            if ep.host not in seen_hosts:
                seen_hosts.add(ep.host)
                self._add("dns", ep.host, from_endpoint(ep, 0))
        for index, stage in ((1, "tcp"), (2, "tls")):
            for ep in endpoints:
                self._add(stage, f"{ep.host}:{ep.port}", from_endpoint(ep, index))

        token_tasks = {name: self._start(lambda n=name: rt.run_token_probe(n)) for name in config.credentials}
        for name in config.credentials:
            async def produce_token(name: str = name) -> list[CheckLine]:
                return [token_line(rt, name, await token_tasks[name])]
            self._add("token", name, produce_token)

        for check in ("imap", "pop3", "smtp"):
            for m in config.mailboxes:
                if check not in m.checks:
                    continue

                async def produce_mail(m: Mailbox = m, check: str = check) -> list[CheckLine]:
                    await asyncio.wait([token_tasks[m.credential]])  # reuse the fresh token, one IdP request
                    res = await self._bounded(lambda: rt.run_mail_probe(MailTarget(m, check)))
                    ep = config.endpoint_for(m, check)
                    line = mail_line(m, check, res, ep)
                    upstream = [(token_tasks[m.credential].result(), f"token {m.credential}")]
                    if ep in ep_tasks:
                        upstream.insert(0, (await ep_tasks[ep], f"{ep.host}:{ep.port}"))
                    return [skip_if_upstream_failed(line, upstream)]
                self._add(check, m.label, produce_mail)

        hook = audit_hook(rt)
        for name, cred in config.credentials.items():
            if cred.graph_audit and hook is not None:
                async def produce_audit(name: str = name) -> list[CheckLine]:
                    lines = audit_lines(rt, name, await self._bounded(lambda: hook.run(rt, name)))
                    token = await token_tasks[name]  # the same client credential signs the Graph request
                    return [skip_if_upstream_failed(x, [(token, f"token {name}")]) for x in lines]
                self._add("audit", name, produce_audit)
            if cred.certificate_file is not None:
                async def produce_cert(name: str = name, path: str = str(cred.certificate_file)) -> list[CheckLine]:
                    return [certificate_line(name, path)]
                self._add("audit", name, produce_cert)
            if cred.secret_expiry is not None:
                async def produce_declared(name: str = name, ts: float = cred.secret_expiry.timestamp()
                                           ) -> list[CheckLine]:
                    return [declared_line(name, ts)]
                self._add("audit", name, produce_declared)

    async def lines(self) -> AsyncIterator[CheckLine]:
        """Every line, in checklist order, each as soon as it and all before it are done."""
        for stage, target, task in self._slots:
            self.waiting_for = f"{stage} {target}"
            for line in await task:
                yield line
            self.done += 1
        self.waiting_for = ""


async def run_checks(config: Config, mailbox: str | None = None) -> list[CheckLine]:
    """All lines at once (tests, automation)."""
    async with Checklist(config, mailbox) as cl:
        return [line async for line in cl.lines()]
