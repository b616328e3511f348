"""The incremental /metrics renderer: byte-identical to prometheus_client over families built the old
way (tests/reference_collector.py), re-renders only what changed, and keeps series per mailbox fixed.
Speed: bench/bench_render.py and bench/bench_scale.py."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.collector import OPENMETRICS, CredentialInfo, M365Exposition, MailboxInfo, MetricsRenderer
from exporter.probes.result import ProbeResult
from exporter.reasons import Reason
from exporter.store import ResultStore
from tests.reference_collector import ReferenceCollector

CREDS = [CredentialInfo("app", "t", "c", "client_credentials", "secret")]
SHARD = ("m365_exporter_shard_info", "Shard of this exporter replica", {"shard": "1", "shards": "3"})


def rich_store(n: int) -> ResultStore:
    st = ResultStore()
    for i in range(n):
        # label values that need escaping: quote, backslash, newline, non-ASCII
        name = f'box{i}@contoso.example' if i % 7 else f'we"ird\\box\n{i} ünïcode'
        for c in ("imap", "pop3", "smtp", "token"):
            key = ("mailbox", name, c)
            st.ensure(key, 60, 15)
            if i % 11 == 10:
                continue  # pending: no result yet
            facts = {"messages": float(i)} if c != "smtp" else {}
            if c == "pop3":
                facts["oldest_message_timestamp"] = 1.7e9 + i
            st.record(key, ProbeResult.ok(0.05 + i / 1e4, **facts) if i % 3
                      else ProbeResult.fail(Reason.AUTH_FAILED, 1e21))
    for name, ok in (("app", True), ("other", False)):
        key = ("credential", name)
        st.ensure(key, 60, 15)
        facts = {"token_expiry": 1.8e9, "token_requests": 4.0, "identity_match": 1.0, "scope:IMAP.AccessAsApp": 0.0}
        st.record(key, ProbeResult.ok(0.2, **facts) if ok else ProbeResult.fail(Reason.SECRET_EXPIRED, 0.1, **facts))
    for host, port in (("outlook.office365.com", "993"), ("outlook.office365.com", "995"),
                       ("login.microsoftonline.com", "443")):
        st.ensure(("endpoint", host, port), 60, 15)
        st.record(("endpoint", host, port),
                  ProbeResult.ok(0.1, dns_success=1.0, dns_duration=0.002, tcp_success=1.0, tls_success=1.0,
                                 tls_version="TLSv1.3", tls_cert_expiry=1.8e9, tls_cert_verified=1.0))
    st.ensure(("audit", "app", "graph"), 3600, 15)
    st.record(("audit", "app", "graph"), ProbeResult.ok(0.3, redirect_uri_match=1.0, **{"secret_expiry:k1": 1.9e9}))
    st.set_fact("m365_mailboxes", float(n))
    st.set_fact("m365_scheduler_late_starts", 3.0)
    return st


def mailboxes() -> list[MailboxInfo]:
    return [MailboxInfo("m", "m@x.example", "app"), MailboxInfo('q"uote', "q@x.example", "app")]


def reference(st: ResultStore, om: bool = False) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ReferenceCollector(st, lambda: CREDS, mailboxes, [SHARD]))
    if om:
        return generate_openmetrics(reg).removesuffix(b"# EOF\n")
    return generate_latest(reg)


def exposition(st: ResultStore) -> M365Exposition:
    e = M365Exposition(st, lambda: CREDS, mailboxes)
    e.add_static(*SHARD)
    return e


def test_byte_identical_to_reference_text_and_openmetrics() -> None:
    st = rich_store(60)
    e = exposition(st)
    now = 1e10  # everything overdue / pending keys overdue both ways
    ours = e.render(now=None)
    assert ours == reference(st)
    assert b'we\\"ird\\\\box\\n0' in ours  # escaping exercised
    assert b"m365_mailbox_oldest_message_timestamp_seconds{" in ours
    assert b'm365_exporter_shard_info{shard="1",shards="3"} 1.0' in ours
    assert e.render(OPENMETRICS) == reference(st, om=True)
    assert b'm365_probe_overdue{check="imap",mailbox="box1@contoso.example"} 1.0' in e.render(now=now)


def test_identical_after_changes_and_reload() -> None:
    st = rich_store(30)
    e = exposition(st)
    e.render()
    st.record(("mailbox", "box5@contoso.example", "imap"), ProbeResult.fail(Reason.TIMEOUT, 15.0))
    st.record(("mailbox", "box5@contoso.example", "pop3"), ProbeResult.ok(0.1, messages=99.0))
    st.record(("endpoint", "outlook.office365.com", "995"), ProbeResult.fail(Reason.TLS_UNTRUSTED, 0.1))
    assert e.render() == reference(st)
    keep = {k for k in st.keys() if "box3@" not in k[1]}  # a reload drops a mailbox, adds one
    st.prune(keep)
    st.ensure(("mailbox", "new@contoso.example", "imap"), 300, 15)
    assert b"box3@" not in e.render()
    assert e.render() == reference(st)


def test_scrape_after_one_result_rerenders_only_that_key() -> None:
    st = rich_store(200)
    e = exposition(st)
    e.render()
    before = e.fragment_renders
    assert e.render() == reference(st)
    assert e.fragment_renders == before  # nothing changed: nothing re-rendered
    st.record(("mailbox", "box8@contoso.example", "imap"), ProbeResult.ok(0.3, messages=1.0))
    body = e.render()
    assert e.fragment_renders == before + 1
    assert b'm365_probe_duration_seconds{check="imap",mailbox="box8@contoso.example"} 0.3\n' in body
    assert b'm365_mailbox_messages{mailbox="box8@contoso.example"} 1.0\n' in body
    assert body == reference(st)


def test_series_per_mailbox() -> None:
    """docs/metrics.md: 25 series per healthy mailbox with imap, pop3 and smtp (+2 per failing check)."""
    st = ResultStore()
    label = "box@contoso.example"
    for c in ("imap", "pop3", "smtp", "token"):
        st.ensure(("mailbox", label, c), 300, 15)
        st.record(("mailbox", label, c), ProbeResult.ok(0.1, messages=3.0, oldest_message_timestamp=1.7e9)
                  if c != "smtp" else ProbeResult.ok(0.1))
    e = M365Exposition(st, list, lambda: [MailboxInfo(label, label, "app")])

    def count() -> int:
        return sum(1 for ln in e.render().decode().splitlines() if not ln.startswith("#") and f'"{label}"' in ln)

    assert count() == 25
    st.record(("mailbox", label, "imap"), ProbeResult.fail(Reason.AUTH_FAILED, 0.1))
    assert count() == 27  # + failures_total{reason} and failure_info{reason}


async def test_renderer_adds_standard_collectors_and_caches() -> None:
    st = rich_store(5)
    r = MetricsRenderer(st, lambda: CREDS, mailboxes)
    body = await r.render()
    for name in (b"python_info{", b"python_gc_objects_collected_total{", b"process_resident_memory_bytes ",
                 b"m365_exporter_build_info{branch="):
        assert name in body
    assert await r.render() == body
    assert await r.body() is await r.body()  # cached until something changes (uncompressed: its parts)
    om = await r.render(OPENMETRICS)
    assert om.endswith(b"# EOF\n") and om.count(b"# EOF") == 1
    assert b"# TYPE m365_probes counter\n" in om and b"# TYPE m365_probes_total counter\n" in body


def test_identical_through_random_changes_slices_and_reloads() -> None:
    """A key's lines live only in its block's joined bytes and are spliced on change: random
    results (families appearing and going, lines growing and shrinking), sliced refreshes as the
    event loop does them, reloads that drop and add keys, always identical to the reference."""
    import random

    rnd = random.Random(11)
    st = rich_store(40)
    e = exposition(st)
    e.render()
    keys = [k for k in st.keys() if k[0] == "mailbox"]
    for step in range(60):
        for _ in range(rnd.randint(1, 25)):
            key = rnd.choice(keys)
            if key not in st.keys():
                continue
            roll = rnd.random()
            if roll < 0.3:
                st.record(key, ProbeResult.fail(rnd.choice([Reason.AUTH_FAILED, Reason.TIMEOUT, Reason.TLS_UNTRUSTED]),
                                                rnd.random() * 10 ** rnd.randint(0, 6)))
            else:
                facts = {"messages": float(rnd.randint(0, 10 ** rnd.randint(0, 9)))} if roll < 0.8 else {}
                st.record(key, ProbeResult.ok(rnd.random() / 10 ** rnd.randint(0, 5), **facts))
        if step % 7 == 3:  # a reload: some mailboxes go, new ones come
            gone = {rnd.choice(keys)[1] for _ in range(3)}
            st.prune({k for k in st.keys() if k[1] not in gone})
            for c in ("imap", "smtp"):
                new = ("mailbox", f"new{step}@contoso.example", c)
                st.ensure(new, 300, 15)
                keys.append(new)
        for _ in range(40):  # the event loop's slices (bounded; a reload waits for the full refresh)
            if e.refresh(limit=rnd.randint(1, 9)):
                break
        if step % 2:
            assert e.render() == reference(st), f"step {step}"


def test_a_failed_rebuild_changes_nothing_and_the_next_render_is_right(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from exporter import collector

    st = rich_store(20)
    e = exposition(st)
    e.render()
    st.record(("mailbox", "box4@contoso.example", "imap"), ProbeResult.fail(Reason.TIMEOUT, 15.0))
    st.record(("mailbox", "box9@contoso.example", "pop3"), ProbeResult.ok(0.1, messages=7.0))

    def broken(*_a, **_k):  # type: ignore[no-untyped-def]
        raise MemoryError("simulated")

    real = collector.pairs
    monkeypatch.setattr(collector, "pairs", broken)
    with pytest.raises(MemoryError):
        e.render()
    monkeypatch.setattr(collector, "pairs", real)
    assert e.render() == reference(st)
