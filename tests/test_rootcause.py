"""Root-cause attribution and state-change logging, against the simulator (real MSAL, real TLS).

A mail check that fails because of its credential carries the credential's reason and names it;
the serving exporter (cached token) and a fresh `check` (no cached token) agree; transient token
trouble does not fail working mail; the log has one line per state change, never per probe.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from exporter.reasons import Reason
from exporter.runtime import MailTarget, Runtime
from exporter.simulator.state import TokenFault
from tests.simenv import APP_ID, CERT_APP_ID, DELEGATE, OTHER_USER, PUBLIC_APP_ID, SECRET, Env, env_fixture, runtime_for

env = env_fixture()


def target(rt: Runtime, address: str, check: str) -> MailTarget:
    m = rt.config.find_mailbox(address)
    assert m is not None
    return MailTarget(m, check)


async def test_expired_secret_fails_mail_checks_with_the_credentials_reason_while_cached_token_works(
        env: Env) -> None:
    serving = await runtime_for(env.config())
    try:
        assert (await serving.run_token_probe("app")).success
        assert (await serving.run_mail_probe(target(serving, "sales@contoso.example", "imap"))).success
        env.state.token_faults[APP_ID] = TokenFault(aadsts=7000222)
        tok = await serving.run_token_probe("app")
        assert tok.reason is Reason.SECRET_EXPIRED
        for check in ("imap", "pop3", "smtp"):
            res = await serving.run_mail_probe(target(serving, "sales@contoso.example", check))
            assert not res.success and res.reason is Reason.SECRET_EXPIRED, (check, res)
            assert res.detail.startswith("credential app: "), res.detail
            assert "cached token still works" in res.detail, res.detail
        # the messages count of the session that did work is still reported
        imap = await serving.run_mail_probe(target(serving, "sales@contoso.example", "imap"))
        assert imap.facts.get("messages") == 5.0, imap.facts
        # other credentials' mailboxes are not affected
        assert (await serving.run_mail_probe(target(serving, "billing@contoso.example", "imap"))).success

        # a fresh process (what `check` does: token probe, then mail probes) reports the same reason
        fresh = await runtime_for(env.config())
        try:
            assert (await fresh.run_token_probe("app")).reason is Reason.SECRET_EXPIRED
            res = await fresh.run_mail_probe(target(fresh, "sales@contoso.example", "imap"))
            assert res.reason is Reason.SECRET_EXPIRED and res.detail.startswith("credential app: ")
            assert SECRET not in res.detail
        finally:
            await fresh.stop()

        # recovery: the next forced refresh works, the mail check is green again
        del env.state.token_faults[APP_ID]
        assert (await serving.run_token_probe("app")).success
        assert (await serving.run_mail_probe(target(serving, "sales@contoso.example", "imap"))).success
    finally:
        await serving.stop()


async def test_missing_role_fails_only_the_check_that_needs_it_as_missing_scope(env: Env) -> None:
    env.state.token_faults[CERT_APP_ID] = TokenFault(missing_scopes=["SMTP.SendAsApp"])
    rt = await runtime_for(env.config())
    try:
        assert (await rt.run_token_probe("cert")).reason is Reason.MISSING_SCOPE
        smtp = await rt.run_mail_probe(target(rt, "billing@contoso.example", "smtp"))
        assert smtp.reason is Reason.MISSING_SCOPE, smtp
        assert smtp.detail.startswith("credential cert: token lacks SMTP.SendAsApp"), smtp.detail
        assert (await rt.run_mail_probe(target(rt, "billing@contoso.example", "imap"))).success
    finally:
        await rt.stop()


async def test_wrong_identity_is_the_mail_checks_reason(env: Env) -> None:
    rt = await runtime_for(env.config())
    try:
        env.state.token_faults[PUBLIC_APP_ID] = TokenFault(wrong_user=OTHER_USER)
        tok = await rt.run_token_probe("delegate")
        assert tok.reason is Reason.WRONG_IDENTITY, tok
        for check in ("imap", "smtp"):
            res = await rt.run_mail_probe(target(rt, "support@contoso.example", check))
            assert res.reason is Reason.WRONG_IDENTITY, (check, res)
            assert OTHER_USER in res.detail and DELEGATE in res.detail
    finally:
        await rt.stop()


async def test_transient_token_trouble_does_not_fail_mail_that_works(env: Env) -> None:
    rt = await runtime_for(env.config())
    try:
        assert (await rt.run_token_probe("app")).success
        env.state.token_faults[APP_ID] = TokenFault(status=503)
        assert (await rt.run_token_probe("app")).reason is Reason.IDP_UNAVAILABLE
        assert (await rt.run_mail_probe(target(rt, "sales@contoso.example", "imap"))).success
    finally:
        await rt.stop()


async def test_mail_check_takes_the_failing_endpoints_reason(env: Env) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: connection refused
    mailboxes = [{"address": "sales@contoso.example", "credential": "app", "checks": ["imap"],
                  "endpoints": {"imap": {"host": "127.0.0.1", "port": port,
                                         "tls": {"ca_file": str(env.sim.ca_file)}}}}]
    rt = await runtime_for(env.config(mailboxes=mailboxes))
    try:
        before = await rt.run_mail_probe(target(rt, "sales@contoso.example", "imap"))
        assert before.reason is Reason.CONNECTION_REFUSED and not before.detail.startswith("endpoint")
        ep = rt.unique_endpoints(rt.config)[("endpoint", "127.0.0.1", str(port))]
        assert (await rt.run_endpoint_probe(ep)).reason is Reason.CONNECTION_REFUSED
        after = await rt.run_mail_probe(target(rt, "sales@contoso.example", "imap"))
        assert after.reason is Reason.CONNECTION_REFUSED
        assert after.detail.startswith(f"endpoint 127.0.0.1:{port}: "), after.detail
    finally:
        await rt.stop()


async def test_log_has_one_line_per_state_change_never_per_probe(env: Env,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    rt = await runtime_for(env.config())
    keys = [("sales@contoso.example", c) for c in ("imap", "pop3", "smtp")]
    caplog.set_level(logging.INFO, logger="m365.transitions")
    try:
        async def round_() -> None:
            await rt.run_token_probe("app")
            for address, check in keys:
                await rt.run_mail_probe(target(rt, address, check))

        await round_()  # healthy start: nothing to say
        env.state.token_faults[APP_ID] = TokenFault(aadsts=7000222)
        for _ in range(3):
            await round_()
        del env.state.token_faults[APP_ID]
        for _ in range(3):
            await round_()
    finally:
        await rt.stop()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "m365.transitions"]
    subjects = ["credential=app"] + [f"mailbox={a} check={c}" for a, c in keys]
    for subject in subjects:
        mine = [(lvl, msg) for lvl, msg in lines if subject + " " in msg + " "]
        failing = [m for lvl, m in mine if lvl == logging.WARNING and " failing" in m]
        recovered = [m for lvl, m in mine if lvl == logging.INFO and " recovered" in m]
        assert len(failing) == 1 and len(recovered) == 1 and len(mine) == 2, (subject, mine)
        assert "reason=secret_expired" in failing[0] and 'fix="' in failing[0]
        assert "was secret_expired" in recovered[0]
    assert len(lines) == 2 * len(subjects), lines
    assert all(SECRET not in msg for _, msg in lines)


def test_log_lines_say_when_the_reason_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from exporter.probes.result import ProbeResult
    from exporter.transitions import TransitionLog

    caplog.set_level(logging.INFO, logger="m365.transitions")
    t = TransitionLog()
    key = ("endpoint", "outlook.office365.com", "993")
    for r in (ProbeResult.ok(0.1), ProbeResult.fail(Reason.TIMEOUT, 1.0, "no answer"),
              ProbeResult.fail(Reason.TIMEOUT, 1.0, "no answer"),
              ProbeResult.fail(Reason.CONNECTION_REFUSED, 0.1, "refused"), ProbeResult.ok(0.1),
              ProbeResult.ok(0.1)):
        t.observe(key, r)
    t.observe(("mailbox", "a@b", "token"), ProbeResult.fail(Reason.SECRET_EXPIRED, 0.1))  # mirror: not logged
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 3, msgs
    assert "endpoint failing: endpoint=outlook.office365.com:993 reason=timeout" in msgs[0]
    assert "reason changed (was timeout)" in msgs[1] and "reason=connection_refused" in msgs[1]
    assert msgs[2].startswith("endpoint recovered: endpoint=outlook.office365.com:993 (was connection_refused")
