#!/usr/bin/env python3
"""Generate alerts/m365-mail-exporter.rules.yml from alerts/config.yml.

Why generated: thresholds, `for:` durations, the job selector and the runbook base URL appear in
many expressions and annotations; keeping them in one small YAML file (config.yml) means an
operator changes them in one place. The generator also turns the closed set of failure reasons
(exporter/reasons.py) into the plain-words text and runbook links of the alert descriptions, so
a page says "client secret has expired (AADSTS7000222)" instead of only `secret_expired`, and a
new reason cannot be forgotten (tests/test_alert_rules.py checks the committed file equals a
fresh generation).

    python alerts/generate.py                      # regenerate the committed rule file
    python alerts/generate.py --check              # exit 1 if it is out of date
    python alerts/generate.py --set alerts.M365MailboxAuthFailing.for=10m --output my.rules.yml

Library use (the end-to-end test shortens every duration this way):

    from generate import load_config, render
    text = render(load_config(overrides={"alerts": {"M365MailboxAuthFailing": {"for": "1s"}}}))
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: make `exporter` importable
    sys.path.insert(0, str(ROOT))

from exporter.reasons import CATALOGUE, Category, Reason  # noqa: E402

DEFAULT_CONFIG = HERE / "config.yml"
DEFAULT_OUTPUT = HERE / "m365-mail-exporter.rules.yml"
GROUP_NAME = "m365-mail-exporter"
SEVERITIES = ("critical", "warning", "info")
MAIL_CHECKS = "imap|pop3|smtp"
# Endpoint reasons that mean "the certificate did not verify" (M365TLSCertificateInvalid);
# every other endpoint reason belongs to M365EndpointUnreachable.
CERT_REASONS = ("tls_cert_expired", "tls_hostname_mismatch", "tls_untrusted")
# Token refresh reasons that have their own alert (and a static `reason` label there).
OWN_ALERT_TOKEN_REASONS = ("wrong_identity", "missing_scope")

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")

# Allowed keys per alert (besides `enabled` and, for single-severity alerts, `severity`).
ALERT_KEYS: dict[str, tuple[str, ...]] = {
    "M365MailboxAuthFailing": ("window", "for"),
    "M365TokenRefreshFailing": ("window", "for"),
    "M365TokenWrongIdentity": ("window", "for"),
    "M365TokenMissingScope": ("window", "for"),
    "M365ClientSecretExpiringSoon": ("warning_days", "critical_days", "for"),
    "M365ClientSecretExpired": ("for",),
    "M365TLSCertificateExpiringSoon": ("warning_days", "critical_days", "for"),
    "M365TLSCertificateInvalid": ("window", "for"),
    "M365EndpointUnreachable": ("window", "for"),
    "M365MailboxBacklogGrowing": ("min_increase", "increase_window", "deriv_window", "for"),
    "M365MailboxConsumerStalled": ("max_age", "for"),
    "M365ProbesStale": ("interval_factor", "for"),
    "M365ExporterDown": ("for",),
    "M365ConfigReloadFailed": ("for",),
}
TWO_TIER = {"M365ClientSecretExpiringSoon", "M365TLSCertificateExpiringSoon"}
DEFAULT_SEVERITY = {
    "M365MailboxAuthFailing": "critical",
    "M365TokenRefreshFailing": "critical",
    "M365TokenWrongIdentity": "critical",
    "M365TokenMissingScope": "critical",
    "M365ClientSecretExpired": "critical",
    "M365TLSCertificateInvalid": "critical",
    "M365EndpointUnreachable": "critical",
    "M365MailboxBacklogGrowing": "warning",
    "M365MailboxConsumerStalled": "warning",
    "M365ProbesStale": "warning",
    "M365ExporterDown": "critical",
    "M365ConfigReloadFailed": "warning",
}


class ConfigError(ValueError):
    pass


# --------------------------------------------------------------------------- configuration


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """`a.b.c=value` strings -> nested dict; the value is parsed as YAML (so 20 is an int)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        value = yaml.safe_load(raw) if raw else ""
        node[parts[-1]] = raw if key == "selector" else value
    return out


def _duration(where: str, v: Any) -> str:
    if not isinstance(v, str) or not _DURATION.match(v):
        raise ConfigError(f"{where}: {v!r} is not a Prometheus duration (e.g. 30s, 5m, 1h)")
    return v


def _number(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise ConfigError(f"{where}: {v!r} must be a positive number")
    return v


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    known = {"selector", "runbook_base_url", "grafana_url", "extra_labels", "gap_tolerance", "alerts"}
    unknown = set(cfg) - known
    if unknown:
        raise ConfigError(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    sel = cfg.get("selector")
    if not isinstance(sel, str) or not sel.strip():
        raise ConfigError('selector: must be non-empty label matchers such as job=~"m365-mail-exporter"')
    if "{" in sel or "}" in sel:
        raise ConfigError("selector: give the matchers only, without braces")
    base = cfg.get("runbook_base_url")
    if not isinstance(base, str) or not base.startswith(("http://", "https://")):
        raise ConfigError("runbook_base_url: must be an http(s) URL")
    graf = cfg.get("grafana_url", "")
    if graf and not str(graf).startswith(("http://", "https://")):
        raise ConfigError("grafana_url: must be an http(s) URL or empty")
    extra = cfg.get("extra_labels") or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise ConfigError("extra_labels: must map label names to string values")
    _duration("gap_tolerance", cfg.get("gap_tolerance"))
    alerts = cfg.get("alerts") or {}
    for name in alerts:
        if name not in ALERT_KEYS:
            raise ConfigError(f"alerts: unknown alert {name!r}; one of {', '.join(ALERT_KEYS)}")
    for name, keys in ALERT_KEYS.items():
        a = alerts.get(name)
        if not isinstance(a, dict):
            raise ConfigError(f"alerts.{name}: missing")
        allowed = {*keys, "enabled"} | (set() if name in TWO_TIER else {"severity"})
        extra_keys = set(a) - allowed
        if extra_keys:
            raise ConfigError(f"alerts.{name}: unknown key(s) {', '.join(sorted(extra_keys))}")
        for k in keys:
            if k not in a:
                raise ConfigError(f"alerts.{name}.{k}: missing")
            where = f"alerts.{name}.{k}"
            if k in ("window", "for", "increase_window", "deriv_window", "max_age"):
                _duration(where, a[k])
            else:
                _number(where, a[k])
        if "severity" in a and a["severity"] not in SEVERITIES:
            raise ConfigError(f"alerts.{name}.severity: one of {', '.join(SEVERITIES)}")
        if name in TWO_TIER and a["critical_days"] >= a["warning_days"]:
            raise ConfigError(f"alerts.{name}: critical_days must be below warning_days")
    return cfg


def load_config(path: Path | str = DEFAULT_CONFIG, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate(cfg)


# --------------------------------------------------------------------------- PromQL helpers


class Q:
    """Selector and expression helpers bound to one config."""

    def __init__(self, cfg: dict[str, Any]):
        self.selector = cfg["selector"].strip()
        self.gap = cfg["gap_tolerance"]

    def sel(self, metric: str, *matchers: str) -> str:
        return f"{metric}{{{','.join([self.selector, *matchers])}}}"

    def current_or_last(self, metric: str, keys: str, *matchers: str) -> str:
        """An `*_failure_info` series as of now, bridging scrape gaps without doubling reasons.

        Normally the series present now (only the current reason is exported). When a failed
        scrape has marked everything stale, the last value within gap_tolerance stands in, but
        only for keys that have no current series (so a change of reason never shows two).
        """
        s = self.sel(metric, *matchers)
        return (
            f"(\n  {s} == 1\n  or\n  (\n    last_over_time({s}[{self.gap}]) == 1\n"
            f"    unless on ({keys})\n    {s}\n  )\n)"
        )

    def last(self, metric: str, *matchers: str) -> str:
        return f"last_over_time({self.sel(metric, *matchers)}[{self.gap}])"

    def failing(self, info: str, keys: str, match: str, success: str, window: str, on: str = "") -> str:
        """The `info` failure series (see current_or_last) where `success` stayed 0 for `window`.

        `success` is a selector; the two are joined on `on`, by default the failure keys.
        """
        return (
            f"{self.current_or_last(info, keys, match)}\n"
            f"and on ({on or keys})\n"
            f"{self.held(f'max_over_time({success}[{window}]) == 0', success, window, on or keys)}"
        )

    def held(self, condition: str, series: str, window: str, on: str) -> str:
        """`condition` (over `window`) for series that already existed `window` ago.

        Why the age guard: for a brand-new series (a mailbox just added, a restart without history)
        `max_over_time(...[window]) == 0` holds from its very first failed probe, so a one-probe blip
        would page after `for:` alone. Requiring a sample from before the window means every series
        needs a whole window of failure, and `for:` can stay short (time to page, docs/alerts.md).
        """
        return f"{condition}\nand on ({on})\nlast_over_time({series}[{self.gap}] offset {window})"


def _indent(text: str, n: int = 2) -> str:
    pad = " " * n
    return "\n".join(pad + line if line else line for line in text.splitlines())


def _days(d: float) -> str:
    return f"{d:g} * 86400"


_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _seconds(duration: str) -> float:
    """A Prometheus duration (`90m`, `1h30m`) in seconds, for comparisons with timestamps
    (Prometheus 2.x has no duration literals in expressions)."""
    parts = re.findall(r"(\d+)(ms|[smhdwy])", duration)
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


# --------------------------------------------------------------------------- annotation helpers


def reasons_in(*cats: Category) -> list[Reason]:
    return [r for r, info in CATALOGUE.items() if info.category in cats]


def reason_words(reasons: Iterable[Reason]) -> str:
    """Go template: the plain-words summary of $labels.reason, generated from exporter/reasons.py.

    Laid out one reason per line; `{{-` trims the line breaks so it renders as one line.
    """
    lines = []
    for i, r in enumerate(reasons):
        text = CATALOGUE[r].summary
        if "{{" in text or "}}" in text:
            raise ValueError(f"reason summary of {r} contains template delimiters")
        head = "{{ if" if i == 0 else "{{- else if"
        lines.append(f'{head} eq $labels.reason "{r.value}" }}}}{text}')
    lines.append("{{- else }}{{ $labels.reason }}")
    lines.append("{{- end }}")
    return "\n".join(lines)


def reason_url(base: str, reasons: Iterable[Reason]) -> str:
    """Go template: <base>/<runbook page of $labels.reason>.md#<reason>."""
    pages: dict[str, list[str]] = {}
    for r in reasons:
        if CATALOGUE[r].runbook != "index":  # the fallback below
            pages.setdefault(CATALOGUE[r].runbook, []).append(r.value)
    parts = []
    for i, (page, values) in enumerate(pages.items()):
        head = "{{ if" if i == 0 else "{{- else if"
        quoted = " ".join(f'"{v}"' for v in values)
        parts.append(f"{head} eq $labels.reason {quoted} }}}}{page}")
    parts.append("{{- else }}index")
    parts.append("{{- end }}.md#{{ $labels.reason }}")
    return f"{base}/" + "\n".join(parts)


# --------------------------------------------------------------------------- the rules


def build_rules(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    q = Q(cfg)
    A = cfg["alerts"]
    base = cfg["runbook_base_url"].rstrip("/")
    graf = (cfg.get("grafana_url") or "").rstrip("/")
    extra = dict(cfg.get("extra_labels") or {})
    all_reasons = list(Reason)
    net_reasons = reasons_in(Category.NETWORK)
    cert_reasons = [r for r in net_reasons if r.value in CERT_REASONS]
    other_net = [r for r in net_reasons if r.value not in CERT_REASONS]
    token_side = [*reasons_in(Category.TOKEN, Category.NETWORK, Category.OTHER)]
    token_side = [r for r in token_side if r.value not in OWN_ALERT_TOKEN_REASONS]

    def dash(uid: str, var: str | None = None) -> dict[str, str]:
        if not graf:
            return {}
        url = f"{graf}/d/{uid}"
        if var:
            url += f"?var-{var}={{{{ $labels.{var} | urlquery }}}}"
        return {"dashboard_url": url}

    rules: list[dict[str, Any]] = []

    def add(name: str, expr: str, for_: str, severity: str, summary: str, description: str,
            dashboard: dict[str, str], labels: dict[str, str] | None = None,
            more: dict[str, str] | None = None) -> None:
        if A[name].get("enabled", True) is False:
            return
        if name not in TWO_TIER:
            severity = A[name].get("severity", severity)
        annotations = {"summary": summary, "description": description,
                       "runbook_url": f"{base}/{name}.md", **dashboard, **(more or {})}
        rules.append({
            "alert": name,
            "expr": expr,
            "for": for_,
            "labels": {"severity": severity, **(labels or {}), **extra},
            "annotations": annotations,
        })

    def add_failing(name: str, expr: str, summary: str, subject: str, reasons: list[Reason],
                    dashboard: dict[str, str], *, words: list[Reason] | None = None,
                    name_exporter: bool = False, consequence: str = "") -> None:
        """A critical alert on a `*_failure_info` series: the description says for how long, why in plain
        words (`words`, default `reasons`) and links the runbook of the reason (also as `reason_url`)."""
        url = reason_url(base, reasons)
        exporter = ", exporter {{ $labels.instance }}" if name_exporter else ""
        add(
            name, expr, A[name]["for"], "critical", summary,
            f"{subject} for {A[name]['window']} or more: "
            f"{reason_words(reasons if words is None else words)} (reason {{{{ $labels.reason }}}}{exporter}). "
            f"{consequence}Fix: {url}",
            dashboard, more={"reason_url": url},
        )

    # ---- mailbox checks (imap / pop3 / smtp)
    a = A["M365MailboxAuthFailing"]
    mk = "job, instance, mailbox, check"
    mchk = f'check=~"{MAIL_CHECKS}"'
    net = 'reason=~"' + "|".join(r.value for r in net_reasons) + '"'
    mail_failing = (
        "(\n"
        + _indent(q.failing("m365_probe_failure_info", mk, mchk, q.sel("m365_probe_success", mchk), a["window"]))
        # root cause: a failing endpoint pages (M365EndpointUnreachable); the mail check then carries the
        # endpoint's reason (exporter/rootcause.py). Excluded here, not only inhibited: the endpoint alert
        # may fire up to one probe interval later than the mail alert, after Alertmanager's group_wait.
        + "\n  unless on (job, instance, reason)\n"
        + _indent(q.current_or_last("m365_endpoint_failure_info", "job, instance, host, port", net))
        + "\n)"
    )
    info = q.last("m365_mailbox_info")
    token_failing = q.current_or_last("m365_token_refresh_failure_info", "job, instance, credential")
    add_failing(
        "M365MailboxAuthFailing",
        # The credential label (from m365_mailbox_info) names the mailbox's credential, and mail checks failing
        # with their credential's current token-refresh reason are left out: the credential's own alert pages.
        # (Inhibition alone races: a check already failing for another reason switches to the credential's
        # reason and would fire after `for:` alone, before the token alert's window has passed.)
        f"(\n{_indent(mail_failing)}\n  * on (job, instance, mailbox) group_left (credential)\n  {info}\n)\n"
        f"unless on (job, instance, credential, reason)\n{token_failing}\n"
        f"or\n(\n{_indent(mail_failing)}\n  unless on (job, instance, mailbox)\n  {info}\n)",
        "A mailbox check (IMAP/POP3/SMTP with OAuth) keeps failing",
        "{{ $labels.check | toUpper }} access to mailbox {{ $labels.mailbox }}"
        "{{ if $labels.credential }} (credential {{ $labels.credential }}){{ end }} has not succeeded",
        all_reasons, dash("m365-mailbox", "mailbox"), name_exporter=True,
    )

    # ---- credentials / tokens
    a = A["M365TokenRefreshFailing"]
    ck = "job, instance, credential"
    excl = 'reason!~"' + "|".join(OWN_ALERT_TOKEN_REASONS) + '"'
    add_failing(
        "M365TokenRefreshFailing",
        q.failing("m365_token_refresh_failure_info", ck, excl, q.sel("m365_token_refresh_success"), a["window"]),
        "Cannot obtain an OAuth token from Microsoft Entra ID",
        "Credential {{ $labels.credential }} has not obtained a token from the identity platform",
        token_side, dash("m365-credentials", "credential"),
        consequence="Mail keeps working on the cached access token until it expires (within about an hour), "
        "then fails; its mailbox checks already report this reason unless it is transient. ",
    )

    def add_token_reason(name: str, reason: str, expr: str, summary: str, description: str) -> None:
        """A critical alert of its own for one token refresh reason (OWN_ALERT_TOKEN_REASONS)."""
        add(name, expr, A[name]["for"], "critical", summary, f"{description} Fix: {base}/token.md#{reason}",
            dash("m365-credentials", "credential"), labels={"reason": reason})

    idm = q.sel("m365_token_identity_match")
    add_token_reason(
        "M365TokenWrongIdentity", "wrong_identity",
        q.held(f"max_over_time({idm}[{A['M365TokenWrongIdentity']['window']}]) == 0", idm,
               A["M365TokenWrongIdentity"]["window"], ck),
        "OAuth token was issued for the wrong account",
        "The token of credential {{ $labels.credential }} was issued for a different user (delegated) or "
        "application (app-only) than configured, so mailbox checks with it fail. Re-run "
        "`m365-mail-exporter login --credential {{ $labels.credential }}` in a private browser window "
        "signed in as the configured account only.",
    )
    msc = q.sel("m365_token_missing_scope")
    add_token_reason(
        "M365TokenMissingScope", "missing_scope",
        q.held(f"min_over_time({msc}[{A['M365TokenMissingScope']['window']}]) == 1", msc,
               A["M365TokenMissingScope"]["window"], ck + ", scope"),
        "OAuth token lacks a permission the mailbox checks need",
        "The token of credential {{ $labels.credential }} lacks {{ $labels.scope }}, which its mailbox "
        "checks need. Add the API permission to the app registration and grant admin consent "
        "(delegated: then re-run login).",
    )

    a = A["M365ClientSecretExpiringSoon"]
    exp = q.last("m365_client_secret_expiry_timestamp_seconds")
    secret_desc = (
        "Client secret/certificate {{ $labels.key_id }} of credential {{ $labels.credential }} expires in "
        "{{ $value | humanizeDuration }}. Create a new secret, deploy it to the exporter and to the mail "
        "application, then delete the old one from the app registration (that resolves this alert)."
    )
    add(
        "M365ClientSecretExpiringSoon",
        f"{exp} - time() < {_days(a['warning_days'])} > 0",
        a["for"], "warning",
        f"An app registration's client secret expires within {a['warning_days']:g} days",
        secret_desc, dash("m365-credentials", "credential"),
    )
    add(
        "M365ClientSecretExpiringSoon",
        f"(\n  {exp} - time() < {_days(a['critical_days'])} > 0\n)\n"
        f"unless on ({ck})\n"
        f"(\n  {exp} - time() >= {_days(a['critical_days'])}\n)",
        a["for"], "critical",
        f"An app registration's client secret expires within {a['critical_days']:g} days",
        secret_desc + " Critical because no other secret/certificate of this credential stays valid "
        "longer.", dash("m365-credentials", "credential"),
    )

    a = A["M365ClientSecretExpired"]
    add(
        "M365ClientSecretExpired",
        f"(\n  time() - {exp} >= 0\n)\nunless on ({ck})\n(\n  {exp} - time() > 0\n)",
        a["for"], "critical",
        "Every client secret/certificate of an app registration has expired",
        "Every client secret/certificate of credential {{ $labels.credential }} has expired (key "
        "{{ $labels.key_id }} {{ $value | humanizeDuration }} ago): the application cannot obtain tokens. "
        "Create a new client secret, deploy it to the exporter and the mail application. "
        f"Fix: {base}/token.md#secret_expired",
        dash("m365-credentials", "credential"),
    )

    # ---- endpoints (DNS / TCP / TLS)
    a = A["M365TLSCertificateExpiringSoon"]
    tls_exp = q.last("m365_tls_cert_expiry_timestamp_seconds")
    tls_desc = (
        "The TLS certificate chain sent by {{ $labels.host }}:{{ $labels.port }} expires in "
        "{{ $value | humanizeDuration }}. Microsoft renews its certificates well ahead; a certificate this "
        "close to expiry usually belongs to a TLS-intercepting proxy or firewall between the exporter and "
        "Microsoft, which must be renewed."
    )
    for sev, key in (("warning", "warning_days"), ("critical", "critical_days")):
        add(
            "M365TLSCertificateExpiringSoon",
            f"{tls_exp} - time() < {_days(a[key])} > 0",
            a["for"], sev,
            f"A mail endpoint's TLS certificate expires within {a[key]:g} days",
            tls_desc, dash("m365-credentials"),
        )

    ek = "job, instance, host, port"
    a = A["M365TLSCertificateInvalid"]
    cert_match = 'reason=~"' + "|".join(CERT_REASONS) + '"'
    add_failing(
        "M365TLSCertificateInvalid",
        q.failing("m365_endpoint_failure_info", ek, cert_match, q.sel("m365_tls_cert_verified"), a["window"]),
        "A mail endpoint's TLS certificate does not verify",
        "The TLS certificate of {{ $labels.host }}:{{ $labels.port }} has failed verification",
        cert_reasons, dash("m365-credentials"), name_exporter=True,
        consequence="Clients that verify TLS cannot connect. ",
    )

    a = A["M365EndpointUnreachable"]
    not_dns_or_cert = 'reason!~"dns_.*|' + "|".join(CERT_REASONS) + '"'
    w = a["window"]
    dns_match = 'reason=~"dns_.*"'
    add_failing(
        "M365EndpointUnreachable",
        "(\n"
        + _indent(
            q.failing("m365_endpoint_failure_info", ek, dns_match, q.sel("m365_dns_lookup_success"), w,
                      on="job, instance, host")
        )
        + "\n)\nor\n(\n"
        + _indent(
            f"{q.current_or_last('m365_endpoint_failure_info', ek, not_dns_or_cert)}\n"
            f"and on ({ek})\n"
            f"(\n  max_over_time({q.sel('m365_tcp_connect_success')}[{w}]) == 0\n  or\n"
            f"  max_over_time({q.sel('m365_tls_handshake_success')}[{w}]) == 0\n)\n"
            f"and on ({ek})\nlast_over_time({q.sel('m365_tcp_connect_success')}[{q.gap}] offset {w})"
        )
        + "\n)",
        "A Microsoft 365 mail endpoint is unreachable (DNS, TCP or TLS)",
        "{{ $labels.host }}:{{ $labels.port }} has been unreachable from exporter {{ $labels.instance }}",
        other_net, dash("m365-overview", "instance"), words=[*other_net, Reason.UNKNOWN],
    )

    # ---- mailbox backlog
    a = A["M365MailboxBacklogGrowing"]
    msgs = q.sel("m365_mailbox_messages")
    add(
        "M365MailboxBacklogGrowing",
        f"delta({msgs}[{a['increase_window']}]) >= {a['min_increase']:g}\n"
        f"and\nderiv({msgs}[{a['deriv_window']}]) > 0",
        a["for"], "warning",
        "A mailbox's INBOX keeps growing: its consumer may have stopped",
        "The INBOX of mailbox {{ $labels.mailbox }} grew by {{ $value | humanize }} messages in the last "
        f"{a['increase_window']} and is still growing: the application that reads this mailbox (ticketing, "
        "ECE, ...) has probably stopped fetching mail. Check that application, not Microsoft 365.",
        dash("m365-mailbox", "mailbox"),
    )

    # ---- the consumer that stopped: the oldest INBOX message's age (age-based: low-volume mailboxes too)
    a = A["M365MailboxConsumerStalled"]
    add(
        "M365MailboxConsumerStalled",
        f"time() - {q.last('m365_mailbox_oldest_message_timestamp_seconds')} > {_seconds(a['max_age']):g}",
        a["for"], "warning",
        "Mail waits unread in a mailbox: its consuming application has stopped reading",
        "The oldest message in the INBOX of mailbox {{ $labels.mailbox }} has been waiting for "
        f"{{{{ $value | humanizeDuration }}}} (threshold {a['max_age']}): the application that reads this mailbox "
        "(ECE retriever, ticketing, ...) has stopped fetching mail, though the exporter's own login works. "
        "Check that application's service, its own OAuth token and its mailbox settings.",
        dash("m365-mailbox", "mailbox"),
    )

    # ---- the exporter itself
    a = A["M365ProbesStale"]
    add(
        "M365ProbesStale",
        f"{q.last('m365_probe_overdue')} == 1\n"
        f"or on ({mk})\n"
        f"(\n  time() - {q.sel('m365_probe_last_run_timestamp_seconds')}\n"
        f"  > {a['interval_factor']:g} * {q.sel('m365_probe_interval_seconds')}\n)",
        a["for"], "warning",
        "Exporter probes are overdue (scheduler stuck or saturated)",
        "No {{ $labels.check }} probe of mailbox {{ $labels.mailbox }} has finished on exporter "
        f"{{{{ $labels.instance }}}} within {a['interval_factor']:g} probe intervals: its metrics are stale "
        "and failures there would go unnoticed. Check the exporter's log, concurrency and timeouts.",
        dash("m365-overview", "instance"),
    )

    a = A["M365ExporterDown"]
    up = q.sel("up")
    add(
        "M365ExporterDown",
        f"{up} == 0\nor\nabsent({up})",
        a["for"], "critical",
        "The m365-mail-exporter cannot be scraped",
        "{{ if $labels.instance }}Prometheus has not been able to scrape {{ $labels.instance }} (job "
        f"{{{{ $labels.job }}}}) for {a['for']}{{{{ else }}}}Prometheus has had no scrape target matching "
        f"{{{q.selector}}} for {a['for']} (gone from service discovery or the scrape config){{{{ end }}}}: "
        "Microsoft 365 mail monitoring from there is blind.",
        dash("m365-overview"),
    )

    a = A["M365ConfigReloadFailed"]
    add(
        "M365ConfigReloadFailed",
        f"{q.last('m365_config_last_reload_successful')} == 0",
        a["for"], "warning",
        "The exporter failed to reload its configuration",
        "The last configuration reload of exporter {{ $labels.instance }} failed; it keeps probing with the "
        "previous configuration. Run `m365-mail-exporter --config.check --config.file FILE` to see the "
        "error, fix the file and reload again.",
        dash("m365-overview", "instance"),
    )
    return rules


# --------------------------------------------------------------------------- YAML output


class _Dumper(yaml.SafeDumper):
    pass


class _Literal(str):
    pass


_Dumper.add_representer(_Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))

HEADER = """\
# GENERATED by alerts/generate.py from alerts/config.yml -- do not edit by hand.
# Change thresholds, `for:` durations, the job selector or the runbook base URL in alerts/config.yml,
# then run `python alerts/generate.py`. Documentation: docs/alerts.md; runbooks: docs/runbooks/.
"""


def render(cfg: dict[str, Any]) -> str:
    rules = build_rules(cfg)
    for r in rules:
        r["expr"] = _Literal(r["expr"])
        desc = r["annotations"]["description"]
        if "\n" in desc:
            r["annotations"]["description"] = _Literal(desc)
        for k in ("reason_url",):
            if k in r["annotations"] and "\n" in r["annotations"][k]:
                r["annotations"][k] = _Literal(r["annotations"][k])
    doc = {"groups": [{"name": GROUP_NAME, "rules": rules}]}
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="settings file (default: alerts/config.yml)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="rule file to write ('-' for stdout)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, dotted path, e.g. alerts.M365MailboxAuthFailing.for=10m")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if --output differs")
    args = p.parse_args(argv)
    try:
        text = render(load_config(args.config, parse_set(args.set)))
    except ConfigError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 2
    if args.check:
        current = Path(args.output).read_text(encoding="utf-8") if Path(args.output).exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python alerts/generate.py", file=sys.stderr)
            return 1
        return 0
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
