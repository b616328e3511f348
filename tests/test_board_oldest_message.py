"""The consumer that stopped: the oldest INBOX message's age, read without side effects.

Scripted servers pin the failure paths (the extra step never fails the login check); the
simulator, seeded over its admin HTTP API, proves the end-to-end metric and that the probes
never change \\Seen, never delete, and never send a state-changing command (its command log).
"""

from __future__ import annotations

import asyncio
import imaplib
import re
import ssl
import time
from typing import Any

import aiohttp
import pytest

from exporter.facts import OLDEST_MESSAGE
from exporter.probes import oldest
from exporter.probes.oldest import parse_date_header, parse_internaldate
from exporter.simulator.pop3 import commit_deletions, message_command
from exporter.simulator.state import SimMailbox
from tests.simenv import env_fixture, runtime_for
from tests.test_probe_mail_clients import (  # the scripted Exchange dialogues
    HANG,
    IMAP_AUTH_LINE,
    IMAP_EXAMINE_OK,
    IMAP_LOGOUT,
    POP_AUTH_OK,
    POP_QUIT,
    Expect,
    check,
    imap_script,
    pki,  # noqa: F401  (fixture)
    pop_script,
    run_imap,
    run_pop,
)

env = env_fixture()

AUTH_OK = b"A1 OK AUTHENTICATE completed.\r\n"
FETCH = Expect(re.escape("F1 FETCH 1 (INTERNALDATE)"))
# Commands that could change what the mail application sees.
MUTATING = re.compile(r"\b(SELECT|STORE|EXPUNGE|COPY|MOVE|APPEND|DELETE|RETR|DELE|BODY\[|RFC822\b)", re.I)


def test_parsers() -> None:
    assert parse_internaldate('* 1 FETCH (INTERNALDATE " 2-Dec-2026 05:27:24 +0000")') == 1796189244.0
    assert parse_internaldate('* 1 FETCH (INTERNALDATE "17-Jul-1996 02:44:25 -0700")') == 837596665.0
    assert parse_internaldate('* 1 FETCH (INTERNALDATE "31-Feb-2026 05:27:24 +0000")') is None
    assert parse_internaldate("* 1 FETCH (FLAGS ())") is None
    assert parse_date_header(["From: x", "Date: Wed, 17 Jul 1996 02:44:25 -0700"]) == 837596665.0
    assert parse_date_header(["DATE: Wed, 17 Jul 1996 09:44:25"]) == 837596665.0  # no zone: UTC
    assert parse_date_header(["Date: yesterday-ish"]) is None
    assert parse_date_header(["Subject: Date: Wed, 17 Jul 1996 02:44:25 -0700"]) is None
    assert oldest.unfold(["Date: Wed,", " 17 Jul 1996", "X: y"]) == ["Date: Wed, 17 Jul 1996", "X: y"]


# --------------------------------------------------------------------------- the extra step never fails


async def test_imap_fetch_refused_is_a_note_not_a_failure(pki: Any) -> None:  # noqa: F811
    script = imap_script([IMAP_AUTH_LINE, AUTH_OK, Expect("A2 EXAMINE INBOX"), IMAP_EXAMINE_OK, FETCH,
                          b"F1 NO FETCH not permitted.\r\n", *IMAP_LOGOUT])
    result, srv = await run_imap(pki, script)
    check(result, None)
    assert result.facts == {"messages": 12.0}
    assert "FETCH answered F1 NO FETCH not permitted" in result.transcript.render()
    assert srv.errors == [] and srv.received[-1] == "A3 LOGOUT"


async def test_imap_fetch_without_internaldate(pki: Any) -> None:  # noqa: F811
    script = imap_script([IMAP_AUTH_LINE, AUTH_OK, Expect("A2 EXAMINE INBOX"), IMAP_EXAMINE_OK, FETCH,
                          b'* 1 FETCH (INTERNALDATE "someday")\r\nF1 OK FETCH completed.\r\n', *IMAP_LOGOUT])
    result, _ = await run_imap(pki, script)
    check(result, None)
    assert OLDEST_MESSAGE not in result.facts
    assert "no INTERNALDATE" in result.transcript.render()


async def test_imap_fetch_silence_costs_the_step_budget_only(pki: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(oldest, "OLDEST_TIMEOUT", 0.5)
    script = imap_script([IMAP_AUTH_LINE, AUTH_OK, Expect("A2 EXAMINE INBOX"), IMAP_EXAMINE_OK, FETCH, HANG])
    t0 = time.monotonic()
    result, _ = await run_imap(pki, script, budget=5)
    check(result, None)
    assert time.monotonic() - t0 < 2.5
    assert result.facts == {"messages": 12.0}
    assert "no answer to FETCH 1 (INTERNALDATE) within 0.5s" in result.transcript.render()


async def test_imap_empty_inbox_sends_no_fetch(pki: Any) -> None:  # noqa: F811
    empty = IMAP_EXAMINE_OK.replace(b"* 12 EXISTS", b"* 0 EXISTS")
    script = imap_script([IMAP_AUTH_LINE, AUTH_OK, Expect("A2 EXAMINE INBOX"), empty, *IMAP_LOGOUT])
    result, srv = await run_imap(pki, script)
    check(result, None)
    assert result.facts == {"messages": 0.0}
    assert srv.errors == []


@pytest.mark.parametrize("reply, note", [
    (b"-ERR TOP not supported\r\n", "TOP answered -ERR TOP not supported"),
    (b"+OK\r\nFrom: a@example.net\r\nDate: not a date\r\n\r\n.\r\n", "no parseable Date header"),
    (b"+OK\r\nFrom: a@example.net\r\n\r\n.\r\n", "no parseable Date header"),
])
async def test_pop3_top_problems_are_notes(pki: Any, reply: bytes, note: str) -> None:  # noqa: F811
    script = pop_script([POP_AUTH_OK, Expect("STAT"), b"+OK 2 4096\r\n", Expect("TOP 1 0"), reply, *POP_QUIT])
    result, srv = await run_pop(pki, script)
    check(result, None)
    assert result.facts == {"messages": 2.0}
    assert note in result.transcript.render()
    assert srv.errors == [] and srv.received[-1] == "QUIT"


async def test_pop3_endless_top_is_bounded(pki: Any) -> None:  # noqa: F811
    flood = b"+OK\r\n" + b"X-Spam: y\r\n" * 600
    script = pop_script([POP_AUTH_OK, Expect("STAT"), b"+OK 1 10\r\n", Expect("TOP 1 0"), flood, HANG])
    result, srv = await run_pop(pki, script)
    check(result, None)  # (the transcript is capped, so the note may not show: the facts say it)
    assert result.facts == {"messages": 1.0}
    assert srv.received[-1] == "TOP 1 0"  # mid-reply: no QUIT on a connection out of step


# --------------------------------------------------------------------------- the simulator end to end


async def test_probes_report_the_seeded_oldest_message_and_change_nothing(env: Any) -> None:
    sales = "sales@contoso.example"
    seeded_age = 5 * 3600
    async with aiohttp.ClientSession() as http:
        ctx = ssl.create_default_context(cafile=str(env.sim.ca_file))
        async with http.post(f"{env.sim.authority_host}/_sim/mailbox/{sales}", json={"oldest_age": seeded_age},
                             ssl=ctx) as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(f"{env.sim.authority_host}/_sim/mailbox/{sales}", json={"seen": []}, ssl=ctx) as resp:
            assert resp.status == 400  # flags are the servers' state
    expected = time.time() - seeded_age
    box = env.state.mailboxes[sales]
    rt = await runtime_for(env.config())
    try:
        for check_name in ("imap", "pop3"):
            result = await rt.probe_now(sales, check_name)
            assert result.success, result.detail
            assert abs(float(result.facts[OLDEST_MESSAGE]) - expected) < 5, check_name
        body = (await rt.renderer.render()).decode()
    finally:
        await rt.stop()
    m = re.search(r'^m365_mailbox_oldest_message_timestamp_seconds\{mailbox="sales@contoso.example"\} (\S+)$',
                  body, re.M)
    assert m is not None, body
    assert abs(float(m.group(1)) - expected) < 5
    assert box.seen == set() and box.deleted == set() and box.messages == 5
    sent = [c for p, c in env.state.commands if p in ("imap", "pop3")]
    assert "F1 FETCH 1 (INTERNALDATE)" in sent and "TOP 1 0" in sent and "A2 EXAMINE INBOX" in sent
    assert [c for c in sent if MUTATING.search(c)] == []
    assert not any("XOAUTH2 " in c and len(c.split()) > 3 for c in sent)  # SASL responses are not logged


async def test_simulator_would_show_a_seen_change(env: Any) -> None:
    """The check above can fail: a client that SELECTs and fetches a body does set \\Seen, and
    EXAMINE + the same fetch does not (RFC 3501 read-only semantics)."""
    sales = "sales@contoso.example"
    rt = await runtime_for(env.config())
    try:
        token = (await rt.providers["app"].get_token()).access_token
    finally:
        await rt.stop()
    sasl = f"user={sales}\x01auth=Bearer {token}\x01\x01".encode()

    def session(mode: str) -> None:
        ctx = ssl.create_default_context(cafile=str(env.sim.ca_file))
        with imaplib.IMAP4_SSL("127.0.0.1", env.sim.imap_port, ssl_context=ctx, timeout=5) as imap:
            imap.authenticate("XOAUTH2", lambda _: sasl)
            imap.select("INBOX", readonly=(mode == "EXAMINE"))
            typ, _ = imap.fetch("1", "(BODY[])")
            assert typ == "OK"

    box = env.state.mailboxes[sales]
    await asyncio.to_thread(session, "EXAMINE")
    assert box.seen == set()
    await asyncio.to_thread(session, "SELECT")
    assert box.seen == {1}


def test_simulated_pop3_dele_commits_at_quit() -> None:
    box = SimMailbox("a@contoso.example", messages=3, oldest_received=1000.0)
    assert message_command("TOP", "1 0", box)[0] == "+OK"
    assert message_command("DELE", "1", box)[0].startswith("+OK")
    assert message_command("TOP", "1 0", box)[0].startswith("-ERR")
    commit_deletions(box)
    assert box.messages == 2 and box.deleted == set()
