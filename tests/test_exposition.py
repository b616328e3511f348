"""The fast exposition writer is byte-identical to prometheus_client's (speed: bench/bench_render.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from exporter.collector import CredentialInfo, M365Collector, MailboxInfo
from exporter.exposition import render_families, render_registry
from exporter.probes.result import ProbeResult
from exporter.reasons import Reason
from exporter.store import ResultStore


def rich_store(n: int) -> ResultStore:
    st = ResultStore()
    for i in range(n):
        # label values that need escaping: quote, backslash, newline, non-ASCII
        name = f'box{i}@contoso.example' if i % 7 else f'we"ird\\box\n{i} ünïcode'
        for c in ("imap", "pop3", "smtp", "token"):
            key = ("mailbox", name, c)
            st.ensure(key, 60, 15)
            st.record(key, ProbeResult.ok(0.05 + i / 1e4, messages=float(i)) if i % 3
                      else ProbeResult.fail(Reason.AUTH_FAILED, 1e21))
    st.ensure(("endpoint", "outlook.office365.com", "993"), 60, 15)
    st.record(("endpoint", "outlook.office365.com", "993"),
              ProbeResult.ok(0.1, dns_success=1.0, dns_duration=0.002, tcp_success=1.0, tls_success=1.0,
                             tls_version="TLSv1.3", tls_cert_expiry=1.8e9, tls_cert_verified=1.0))
    st.set_fact("m365_mailboxes", float(n))
    return st


def registry_for(st: ResultStore) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(M365Collector(st, lambda: [CredentialInfo("app", "t", "c", "client_credentials", "secret")],
                               lambda: [MailboxInfo("m", "m@x.example", "app")]))
    return reg


def test_byte_identical_to_prometheus_client() -> None:
    reg = registry_for(rich_store(50))
    ours = render_registry(reg)
    theirs = generate_latest(reg)
    assert ours == theirs
    assert b'we\\"ird\\\\box\\n0' in ours  # escaping exercised


def test_unusual_families_fall_back_to_prometheus_client() -> None:
    g = GaugeMetricFamily("m365_x", "doc with \\ and\nnewline", labels=["a"])
    g.add_metric(["v"], float("inf"), timestamp=123.0)  # timestamps take the fallback path
    c = CounterMetricFamily("m365_y", "counter", labels=["b"])
    c.add_metric(["w"], 3.0, created=10.0)  # _created sample: fallback
    reg = CollectorRegistry(auto_describe=False)

    class Fixed:
        def collect(self):  # type: ignore[no-untyped-def]
            return [g, c]

    reg.register(Fixed())  # type: ignore[arg-type]
    assert render_families([g, c]) == generate_latest(reg)

