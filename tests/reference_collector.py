"""Reference /metrics: families built the old way (prometheus_client metric families, full render).

Why keep it: tests/test_exposition.py checks that the incremental renderer in
exporter/collector.py produces byte-identical output to `generate_latest` over these families,
in the text format and in OpenMetrics. Deliberate differences from the pre-incremental
collector are the documented cardinality decisions (docs/metrics.md): the per-mailbox token
mirror keeps only success and failure_info; m365_mailbox_oldest_message_timestamp_seconds and
static families (shard info) were added; build info gained revision and branch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.buildinfo import build_info
from exporter.collector import CredentialInfo, MailboxInfo
from exporter.facts import IDENTITY_MATCH, SCOPE_PREFIX, SECRET_PREFIX, TOKEN_EXPIRY, TOKEN_REFRESHED, TOKEN_REQUESTS
from exporter.store import KeyState, ResultStore


class ReferenceCollector(Collector):
    def __init__(self, store: ResultStore, credentials: Callable[[], list[CredentialInfo]],
                 mailboxes: Callable[[], list[MailboxInfo]] | None = None,
                 static: Iterable[tuple[str, str, dict[str, str]]] = ()) -> None:
        self.store = store
        self.static = list(static)
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
        oldest_by_mailbox: dict[str, tuple[float, float]] = {}
        messages = GaugeMetricFamily(
            "m365_mailbox_messages", "Messages in INBOX from IMAP EXAMINE or POP3 STAT (from background probes)",
            labels=["mailbox"],
        )
        oldest = GaugeMetricFamily(
            "m365_mailbox_oldest_message_timestamp_seconds",
            "Arrival time of the oldest message in INBOX from IMAP or POP3 (from background probes)",
            labels=["mailbox"],
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
                              failures, failing, messages_by_mailbox, oldest_by_mailbox)
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
                for fact, fam in ((TOKEN_EXPIRY, tok_exp), (TOKEN_REFRESHED, tok_last), (IDENTITY_MATCH, tok_id)):
                    if isinstance(facts.get(fact), int | float):
                        fam.add_metric([name], float(facts[fact]))
                if isinstance(facts.get(TOKEN_REQUESTS), int | float):
                    tok_req.add_metric([name], float(facts[TOKEN_REQUESTS]))
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
        bi = build_info().labels()
        build = GaugeMetricFamily("m365_exporter_build_info", "Build information", labels=list(bi))
        build.add_metric(list(bi.values()), 1.0)
        statics = []
        for name, doc, labels in self.static:
            fam = GaugeMetricFamily(name, doc, labels=list(labels))
            fam.add_metric(list(labels.values()), 1.0)
            statics.append(fam)
        facts = dict(self.store.facts)
        yield from (success, duration, last_run, last_ok, interval, overdue, total, failures, failing, messages, oldest,
                    tok_ok, tok_dur, tok_exp, tok_last, tok_id, tok_fail, tok_fail_info, tok_req, tok_scope,
                    secret_exp, audit_ok, audit_fail, redirect_ok, info, mailbox_info, dns_ok, dns_dur, tcp_ok,
                    tcp_dur, tls_ok, tls_dur, tls_ver, tls_verified, tls_exp, ep_fail, build,
                    *statics)
        for name, doc in (
            ("m365_config_last_reload_successful", "0 if the last config reload failed (old config keeps running)"),
            ("m365_config_last_reload_success_timestamp_seconds", "When a config was last loaded successfully"),
            ("m365_mailboxes", "Configured mailboxes"),
            ("m365_credentials", "Configured credentials"),
            ("m365_scheduler_queue_wait_seconds", "How long the last probe waited for a concurrency slot"),
            ("m365_scheduler_start_lateness_seconds", "How late after its slot the last scheduled probe started"),
        ):
            if name in facts:
                yield GaugeMetricFamily(name, doc, value=facts[name])
        if "m365_scheduler_late_starts" in facts:
            yield CounterMetricFamily("m365_scheduler_late_starts",
                                      "Scheduled probes that started more than 2 s after their slot",
                                      value=facts["m365_scheduler_late_starts"])

    @staticmethod
    def _mailbox(key: tuple[str, ...], st: KeyState, now: float, success: GaugeMetricFamily,
                 duration: GaugeMetricFamily, last_run: GaugeMetricFamily, last_ok: GaugeMetricFamily,
                 interval: GaugeMetricFamily, overdue: GaugeMetricFamily, total: CounterMetricFamily,
                 failures: CounterMetricFamily, failing: GaugeMetricFamily,
                 messages: dict[str, tuple[float, float]], oldest: dict[str, tuple[float, float]]) -> None:
        mailbox, check = key[1], key[2]
        labels = [mailbox, check]
        if check == "token":  # the per-mailbox token mirror: success and failure_info only
            res = st.last
            if res is not None:
                success.add_metric(labels, 1.0 if res.success else 0.0)
                if not res.success and res.reason is not None:
                    failing.add_metric([mailbox, check, res.reason.value], 1.0)
            return
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
        if isinstance(res.facts.get("oldest_message_timestamp"), int | float):
            prev = oldest.get(mailbox)
            if prev is None or prev[0] < res.finished_at:
                oldest[mailbox] = (res.finished_at, float(res.facts["oldest_message_timestamp"]))

