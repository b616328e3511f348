"""Collector: renders Prometheus metric families from the ResultStore, and caches the bytes.

Why a custom collector: every series is derived from stored probe results (scrapes never
probe), label sets are exactly those documented in docs/metrics.md, and series disappear
when a mailbox is removed from the config. Rendering runs in a worker thread and its output
is cached until the store changes (or one second passes, for time-derived gauges such as
`m365_probe_overdue`), so scrape latency stays flat with thousands of mailboxes.
"""

from __future__ import annotations

import asyncio
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import msal
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .exposition import render_registry
from .probes.oldest import OLDEST_FACT
from .store import KeyState, ResultStore

CACHE_MAX_AGE = 1.0

# facts recorded by the token probe on ("credential", name) results
F_EXPIRY = "token_expiry"
F_REFRESHED = "token_last_refresh"
F_IDENTITY = "identity_match"
F_REQUESTS = "token_requests"
SCOPE_PREFIX = "scope:"  # "scope:IMAP.AccessAsApp" -> 1 missing / 0 present
SECRET_PREFIX = "secret_expiry:"  # "secret_expiry:<key_id>" -> unix time


@dataclass(frozen=True)
class MailboxInfo:
    """Configured mailbox: joins mailbox series to their credential (dashboards, alert routing)."""

    mailbox: str
    address: str
    credential: str


@dataclass(frozen=True)
class CredentialInfo:
    name: str
    tenant_id: str
    client_id: str
    flow: str
    auth: str


class M365Collector(Collector):
    def __init__(self, store: ResultStore, credentials: Callable[[], list[CredentialInfo]],
                 mailboxes: Callable[[], list[MailboxInfo]] | None = None) -> None:
        self.store = store
        self.credentials = credentials
        self.mailboxes = mailboxes or list

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked collector: families are dynamic

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        snap = self.store.snapshot()
        mb = lambda n, d: GaugeMetricFamily(n, d + " (from background probes)", labels=["mailbox", "check"])  # noqa: E731
        success = mb("m365_probe_success", "1 if the last probe of this mailbox check succeeded")
        duration = mb("m365_probe_duration_seconds", "Duration of the last probe")
        last_run = mb("m365_probe_last_run_timestamp_seconds", "When the last probe finished")
        last_ok = mb("m365_probe_last_success_timestamp_seconds", "When a probe last succeeded")
        interval = mb("m365_probe_interval_seconds", "Configured probe interval")
        overdue = mb("m365_probe_overdue", "1 if no probe finished within 2 intervals plus the timeout")
        total = CounterMetricFamily("m365_probes", "Probes run (background probes)", labels=["mailbox", "check"])
        failures = CounterMetricFamily(
            "m365_probe_failures", "Failed probes by reason (background probes)", labels=["mailbox", "check", "reason"]
        )
        failing = GaugeMetricFamily(
            "m365_probe_failure_info", "1 while the check fails with this reason (from background probes)",
            labels=["mailbox", "check", "reason"],
        )
        messages_by_mailbox: dict[str, tuple[float, float]] = {}
        messages = GaugeMetricFamily(
            "m365_mailbox_messages", "Messages in INBOX from IMAP EXAMINE or POP3 STAT (from background probes)",
            labels=["mailbox"],
        )
        oldest_by_mailbox: dict[str, tuple[float, float]] = {}
        oldest = GaugeMetricFamily(
            "m365_mailbox_oldest_message_timestamp_seconds",
            "Arrival of the oldest INBOX message from IMAP FETCH INTERNALDATE or POP3 TOP Date (from background "
            "probes; absent when INBOX is empty)", labels=["mailbox"],
        )
        cg = lambda n, d: GaugeMetricFamily(n, d + " (from background token probes)", labels=["credential"])  # noqa: E731
        tok_ok = cg("m365_token_refresh_success", "1 if the last forced token refresh succeeded")
        tok_dur = cg("m365_token_refresh_duration_seconds", "Duration of the last token refresh")
        tok_exp = cg("m365_token_expiry_timestamp_seconds", "Expiry of the current access token")
        tok_last = cg("m365_token_last_refresh_timestamp_seconds", "When a token was last obtained from the IdP")
        tok_id = cg("m365_token_identity_match", "1 if the token was issued for the configured identity")
        tok_fail = CounterMetricFamily(
            "m365_token_refresh_failures", "Failed token refreshes by reason", labels=["credential", "reason"]
        )
        tok_fail_info = GaugeMetricFamily(
            "m365_token_refresh_failure_info", "1 while token refresh fails with this reason",
            labels=["credential", "reason"],
        )
        tok_req = CounterMetricFamily(
            "m365_token_requests", "Requests sent to the token endpoint by this exporter", labels=["credential"]
        )
        tok_scope = GaugeMetricFamily(
            "m365_token_missing_scope", "1 if the token lacks a scope/role the credential's checks need",
            labels=["credential", "scope"],
        )
        secret_exp = GaugeMetricFamily(
            "m365_client_secret_expiry_timestamp_seconds",
            "Expiry of the app's client secrets and certificate credentials (Graph audit or declared)",
            labels=["credential", "key_id"],
        )
        ag = lambda n, d, labels: GaugeMetricFamily(n, d + " (from the background Graph audit)", labels=labels)  # noqa: E731
        audit_ok = ag("m365_app_audit_success", "1 if the last app-registration read from Microsoft Graph succeeded",
                      ["credential"])
        audit_fail = ag("m365_app_audit_failure_info", "1 while the app-registration audit fails with this reason",
                        ["credential", "reason"])
        redirect_ok = ag("m365_app_redirect_uri_match",
                         "1 if app_external_url is among the app registration's web redirect URIs", ["credential"])
        eg = lambda n, d, labels: GaugeMetricFamily(n, d + " (from background endpoint probes)", labels=labels)  # noqa: E731
        dns_ok = eg("m365_dns_lookup_success", "1 if the host resolved", ["host"])
        dns_dur = eg("m365_dns_lookup_duration_seconds", "DNS resolution time", ["host"])
        tcp_ok = eg("m365_tcp_connect_success", "1 if a TCP connection was established", ["host", "port"])
        tcp_dur = eg("m365_tcp_connect_duration_seconds", "TCP connect time", ["host", "port"])
        tls_ok = eg("m365_tls_handshake_success", "1 if a verified TLS handshake completed", ["host", "port"])
        tls_dur = eg("m365_tls_handshake_duration_seconds", "TLS handshake time", ["host", "port"])
        tls_ver = eg("m365_tls_version_info", "Negotiated TLS version", ["host", "port", "version"])
        tls_verified = eg("m365_tls_cert_verified", "1 if the certificate chain and host name verified",
                          ["host", "port"])
        tls_exp = eg("m365_tls_cert_expiry_timestamp_seconds", "Earliest notAfter in the certificate chain sent",
                     ["host", "port"])
        ep_fail = eg("m365_endpoint_failure_info", "1 while the endpoint check fails with this reason",
                     ["host", "port", "reason"])

        dns_seen: dict[str, tuple[float, float, float | None]] = {}
        for key, st in snap.items():
            kind = key[0]
            if kind == "mailbox":
                self._mailbox(key, st, now, success, duration, last_run, last_ok, interval, overdue, total,
                              failures, failing, messages_by_mailbox)
                self._latest_fact(key[1], st, OLDEST_FACT, oldest_by_mailbox)
            elif kind == "credential":
                name = key[1]
                res = st.last
                for reason, n in st.failures.items():
                    tok_fail.add_metric([name, reason], n)
                if res is None:
                    continue
                facts = res.facts
                tok_ok.add_metric([name], 1.0 if res.success else 0.0)
                tok_dur.add_metric([name], res.duration)
                if not res.success and res.reason is not None:
                    tok_fail_info.add_metric([name, res.reason.value], 1.0)
                for fact, fam in ((F_EXPIRY, tok_exp), (F_REFRESHED, tok_last), (F_IDENTITY, tok_id)):
                    if isinstance(facts.get(fact), int | float):
                        fam.add_metric([name], float(facts[fact]))
                if isinstance(facts.get(F_REQUESTS), int | float):
                    tok_req.add_metric([name], float(facts[F_REQUESTS]))
                for fact, value in facts.items():
                    if fact.startswith(SCOPE_PREFIX) and isinstance(value, int | float):
                        tok_scope.add_metric([name, fact[len(SCOPE_PREFIX):]], float(value))
            elif kind == "endpoint":
                host, port = key[1], key[2]
                res = st.last
                if res is None:
                    continue
                f = res.facts
                if "dns_success" in f and res.finished_at > dns_seen.get(host, (0.0, 0.0, None))[0]:
                    dur = f.get("dns_duration")
                    dns_seen[host] = (res.finished_at, float(f["dns_success"]),
                                      float(dur) if isinstance(dur, int | float) else None)
                for fact, fam in (("tcp_success", tcp_ok), ("tcp_duration", tcp_dur), ("tls_success", tls_ok),
                                  ("tls_duration", tls_dur), ("tls_cert_verified", tls_verified),
                                  ("tls_cert_expiry", tls_exp)):
                    if isinstance(f.get(fact), int | float):
                        fam.add_metric([host, port], float(f[fact]))
                if isinstance(f.get("tls_version"), str):
                    tls_ver.add_metric([host, port, str(f["tls_version"])], 1.0)
                if not res.success and res.reason is not None:
                    ep_fail.add_metric([host, port, res.reason.value], 1.0)
            elif kind == "audit" and st.last is not None:
                for fact, value in st.last.facts.items():
                    if fact.startswith(SECRET_PREFIX) and isinstance(value, int | float):
                        secret_exp.add_metric([key[1], fact[len(SECRET_PREFIX):]], float(value))
                if key[2] == "graph":  # exporter/audit.py
                    res = st.last
                    audit_ok.add_metric([key[1]], 1.0 if res.success else 0.0)
                    if not res.success and res.reason is not None:
                        audit_fail.add_metric([key[1], res.reason.value], 1.0)
                    if isinstance(res.facts.get("redirect_uri_match"), int | float):
                        redirect_ok.add_metric([key[1]], float(res.facts["redirect_uri_match"]))

        for mailbox, (_, value) in messages_by_mailbox.items():
            messages.add_metric([mailbox], value)
            if value == 0:  # INBOX emptied since an older probe saw a message: nothing waits
                oldest_by_mailbox.pop(mailbox, None)
        for mailbox, (_, value) in oldest_by_mailbox.items():
            oldest.add_metric([mailbox], value)
        for host, (_, ok, dur) in dns_seen.items():
            dns_ok.add_metric([host], ok)
            if dur is not None:
                dns_dur.add_metric([host], dur)
        creds = self.credentials()
        info = GaugeMetricFamily(
            "m365_credential_info", "Configured credentials",
            labels=["credential", "tenant_id", "client_id", "flow", "auth"],
        )
        for c in creds:
            info.add_metric([c.name, c.tenant_id, c.client_id, c.flow, c.auth], 1.0)
        mailbox_info = GaugeMetricFamily(
            "m365_mailbox_info", "Configured mailboxes and the credential each uses",
            labels=["mailbox", "address", "credential"],
        )
        for m in self.mailboxes():
            mailbox_info.add_metric([m.mailbox, m.address, m.credential], 1.0)
        build = GaugeMetricFamily(
            "m365_exporter_build_info", "Build information", labels=["version", "python_version", "msal_version"]
        )
        build.add_metric([__version__, platform.python_version(), msal.__version__], 1.0)
        facts = dict(self.store.facts)
        if "shard_total" in facts:  # exporter/sharding.py; the only series that names the shard
            shard = GaugeMetricFamily("m365_exporter_shard_info", "This replica's shard of the configured mailboxes",
                                      labels=["shard", "shards"])
            shard.add_metric([str(int(facts["shard_index"])), str(int(facts["shard_total"]))], 1.0)
            yield shard
        yield from (success, duration, last_run, last_ok, interval, overdue, total, failures, failing, messages, oldest,
                    tok_ok, tok_dur, tok_exp, tok_last, tok_id, tok_fail, tok_fail_info, tok_req, tok_scope,
                    secret_exp, audit_ok, audit_fail, redirect_ok, info, mailbox_info, dns_ok, dns_dur, tcp_ok,
                    tcp_dur, tls_ok, tls_dur, tls_ver, tls_verified, tls_exp, ep_fail, build)
        for name, doc in (
            ("m365_config_last_reload_successful", "0 if the last config reload failed (old config keeps running)"),
            ("m365_config_last_reload_success_timestamp_seconds", "When a config was last loaded successfully"),
            ("m365_mailboxes", "Configured mailboxes"),
            ("m365_credentials", "Configured credentials"),
            ("m365_scheduler_queue_wait_seconds", "How long the last probe waited for a concurrency slot"),
            ("m365_web_connections", "Open connections to the web port"),
            ("m365_web_connection_limit", "Cap on web connections (--web.max-connections within the fd budget)"),
        ):
            if name in facts:
                yield GaugeMetricFamily(name, doc, value=facts[name])

    @staticmethod
    def _mailbox(key: tuple[str, ...], st: KeyState, now: float, success: GaugeMetricFamily,
                 duration: GaugeMetricFamily, last_run: GaugeMetricFamily, last_ok: GaugeMetricFamily,
                 interval: GaugeMetricFamily, overdue: GaugeMetricFamily, total: CounterMetricFamily,
                 failures: CounterMetricFamily, failing: GaugeMetricFamily,
                 messages: dict[str, tuple[float, float]]) -> None:
        mailbox, check = key[1], key[2]
        labels = [mailbox, check]
        interval.add_metric(labels, st.interval)
        overdue.add_metric(labels, 1.0 if st.overdue(now) else 0.0)
        total.add_metric(labels, st.total)
        for reason, n in sorted(st.failures.items()):
            failures.add_metric([mailbox, check, reason], n)
        if st.last_success_at is not None:
            last_ok.add_metric(labels, st.last_success_at)
        res = st.last
        if res is None:
            return
        success.add_metric(labels, 1.0 if res.success else 0.0)
        duration.add_metric(labels, res.duration)
        last_run.add_metric(labels, res.finished_at)
        if not res.success and res.reason is not None:
            failing.add_metric([mailbox, check, res.reason.value], 1.0)
        if "messages" in res.facts and isinstance(res.facts["messages"], int | float):
            # IMAP and POP3 both report it; keep the most recent per mailbox
            prev = messages.get(mailbox)
            if prev is None or prev[0] < res.finished_at:
                messages[mailbox] = (res.finished_at, float(res.facts["messages"]))


    @staticmethod
    def _latest_fact(mailbox: str, st: KeyState, fact: str, out: dict[str, tuple[float, float]]) -> None:
        """Keep the most recent value of a per-mailbox fact reported by several checks (IMAP and POP3)."""
        res = st.last
        if res is None or not isinstance(res.facts.get(fact), int | float):
            return
        prev = out.get(mailbox)
        if prev is None or prev[0] < res.finished_at:
            out[mailbox] = (res.finished_at, float(res.facts[fact]))


class MetricsRenderer:
    """Cached exposition bytes, rendered off the event loop."""

    def __init__(self, store: ResultStore, credentials: Callable[[], list[CredentialInfo]],
                 mailboxes: Callable[[], list[MailboxInfo]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(M365Collector(store, credentials, mailboxes))
        self.registry.register(ProcessCollector(registry=None))
        self.store = store
        self._cached: bytes = b""
        self._cached_version = -1
        self._cached_at = 0.0
        self._lock = threading.Lock()
        self._render_lock: asyncio.Lock | None = None

    def render_sync(self) -> bytes:
        with self._lock:
            version = self.store.version
            data = render_registry(self.registry)
            self._cached, self._cached_version, self._cached_at = data, version, time.monotonic()
            return data

    def fresh(self) -> bool:
        return self._cached_version == self.store.version and time.monotonic() - self._cached_at < CACHE_MAX_AGE

    async def render(self) -> bytes:
        if self.fresh():
            return self._cached
        if self._render_lock is None:
            self._render_lock = asyncio.Lock()
        async with self._render_lock:  # concurrent scrapes share one render
            if self.fresh():
                return self._cached
            return await asyncio.to_thread(self.render_sync)
