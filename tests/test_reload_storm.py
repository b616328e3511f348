"""Reload storms with a slow identity platform: exactly one task per job, logins and token
requests only as due, a slow IdP reported as `timeout`, cancellation never swallowed.

Why against the simulator: the failure this guards against (issue 9) needs real MSAL in its
thread pool, a token endpoint slower than a mailbox's timeout and real IMAP/POP3/SMTP logins
to count; mocks would not reproduce the CancelledError that MSAL's waiters see.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import scheduler as sched
from exporter.reasons import Reason
from exporter.runtime import MailTarget, Runtime
from exporter.simulator.state import TokenFault
from tests.simenv import APP_ID, CERT_APP_ID, PUBLIC_APP_ID, Env, env_fixture, runtime_for

env = env_fixture()

IDP_DELAY = 2.0  # every token request takes this long ...
MAIL_TIMEOUT = 1.0  # ... longer than a mailbox's timeout
WINDOW = 12.0  # observation window after the storm


def slow_idp(env: Env, delay: float = IDP_DELAY) -> None:
    for client_id in (APP_ID, CERT_APP_ID, PUBLIC_APP_ID):
        env.state.token_faults[client_id] = TokenFault(delay=delay)


def storm_config(env: Env, i: int) -> dict[str, Any]:
    mailboxes: list[dict[str, Any]] = [
        {"address": "sales@contoso.example", "credential": "app", "checks": ["imap", "pop3"],
         "timeout": MAIL_TIMEOUT},
        {"address": "billing@contoso.example", "credential": "cert", "checks": ["imap"], "timeout": MAIL_TIMEOUT},
    ]
    if i % 3 == 0:  # a mailbox (the delegated credential's only user) comes and goes ...
        mailboxes.append({"address": "support@contoso.example", "credential": "delegate", "checks": ["smtp"],
                          "timeout": MAIL_TIMEOUT})
    cfg = env.config(mailboxes=mailboxes, interval=5 if i % 2 else 6, token_interval=20 if i % 2 else 21,
                     timeout=3, network_checks=False)
    raw = cfg.model_dump(mode="json", exclude_none=True)
    if i % 3:
        del raw["credentials"]["delegate"]  # ... and so does its credential
    return raw


def live_probe_tasks(rt: Runtime) -> collections.Counter[str]:
    """Every live copy of every job: probe tasks the loop knows of (zombies included) + armed timers."""
    tasks = collections.Counter(t.get_name() for t in asyncio.all_tasks()
                                if t.get_name().startswith("probe:") and not t.done())
    return tasks + collections.Counter(rt.scheduler.armed())


async def test_reload_storm_leaves_exactly_one_task_per_job_and_due_traffic(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sched, "STARTUP_SPREAD", 0.3)  # first runs land inside the storm, mid-acquisition
    slow_idp(env)
    path = tmp_path / "storm.yml"
    path.write_text(yaml.safe_dump(storm_config(env, 1)))
    from exporter.config import load_config

    rt = Runtime(load_config(path), str(path))
    env.state.counters.clear()
    storm_t0 = time.monotonic()
    rt.start()
    try:
        reloads = 100
        for i in range(1, reloads + 1):
            path.write_text(yaml.safe_dump(storm_config(env, i)))
            ok, why = await rt.reload()
            assert ok, why
            await asyncio.sleep(0.03 if i % 10 else 0.6)  # some reloads land while tokens are in flight
        final = rt.config
        assert len(final.mailboxes) == 2 and "delegate" not in final.credentials  # i = 100: removed
        wanted = {"probe:" + "/".join(j.key) for j in rt.scheduler.jobs}
        deadline = time.monotonic() + 5.0  # cancelled tasks get a moment to end
        while (tasks := live_probe_tasks(rt)) and (set(tasks) != wanted or any(n > 1 for n in tasks.values())):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)

        storm_elapsed = time.monotonic() - storm_t0
        storm = dict(env.state.counters)
        env.state.counters.clear()
        t0 = time.monotonic()
        await asyncio.sleep(WINDOW)
        elapsed = time.monotonic() - t0
        counters = dict(env.state.counters)
        tasks_after = live_probe_tasks(rt)
    finally:
        await rt.stop()
    print(f"\nafter {reloads} reloads: {sum(tasks.values())} tasks for {len(wanted)} jobs, at most "
          f"{max(tasks.values())} per job; in the {WINDOW:.0f}s after: {sum(tasks_after.values())} tasks, counters "
          f"{ {k: n for k, n in counters.items() if k[0] in ('token', 'imap', 'pop3', 'smtp')} }")
    assert set(tasks) == wanted, f"extra: {set(tasks) - wanted}, missing: {wanted - set(tasks)}"
    assert all(n == 1 for n in tasks.values()), tasks
    assert not any("support@" in name or "delegate" in name for name in tasks)  # removed jobs stopped

    assert set(tasks_after) == wanted and all(n == 1 for n in tasks_after.values()), tasks_after

    # during the storm itself: a reload keeps each job's rhythm and each credential's token
    storm_logins = collections.Counter({(k[0], k[1].lower()): n for k, n in storm.items()
                                        if k[0] in ("imap", "pop3", "smtp") and k[1]
                                        and not k[1].startswith("support@")})  # comes and goes: new each time
    storm_due = int(storm_elapsed // 5) + 2
    assert all(n <= storm_due for n in storm_logins.values()), (storm_elapsed, storm_due, storm_logins)
    storm_tokens = {cid: sum(n for k, n in storm.items() if k[0] == "token" and k[1] == cid)
                    for cid in (APP_ID, CERT_APP_ID)}
    assert all(n <= int(storm_elapsed // 20) + 2 for n in storm_tokens.values()), (storm_elapsed, storm_tokens)
    print(f"\nduring the {storm_elapsed:.0f}s storm: logins {dict(storm_logins)} (due <= {storm_due}), "
          f"token requests {storm_tokens}")

    interval = final.defaults.interval
    due = int(elapsed // interval) + 2  # a first run inside the window's start plus one per interval
    logins: collections.Counter[tuple[str, str]] = collections.Counter()
    for key, n in counters.items():
        if key[0] in ("imap", "pop3", "smtp") and key[1]:
            logins[(key[0], key[1].lower())] += n
    assert logins, f"no logins at all in {elapsed:.0f}s: {counters}"
    assert all(n <= due for n in logins.values()), (due, logins)
    assert not any(addr.startswith("support@") for _, addr in logins), logins  # removed mailbox: no zombie

    # token requests: one forced refresh per credential (token_interval > window) plus at most
    # one cache-miss acquisition that mail probes share
    requests = {cid: sum(n for k, n in counters.items() if k[0] == "token" and k[1] == cid)
                for cid in (APP_ID, CERT_APP_ID, PUBLIC_APP_ID)}
    assert requests[APP_ID] <= 2 and requests[CERT_APP_ID] <= 2, requests
    assert requests[PUBLIC_APP_ID] == 0, requests  # the removed credential: no zombie asks for tokens
    print(f"\nafter {reloads} reloads: tasks per job {max(tasks.values())}, {len(tasks)} tasks for "
          f"{len(wanted)} jobs; in {elapsed:.0f}s (interval {interval:.0f}s, due <= {due}): logins "
          f"{dict(logins)}, token requests {requests}")


async def test_slow_idp_gives_timeout_and_arms_no_backoff(env: Env) -> None:
    slow_idp(env)
    cfg = env.config(mailboxes=[{"address": "sales@contoso.example", "credential": "app", "checks": ["imap"],
                                 "timeout": MAIL_TIMEOUT}], timeout=3, network_checks=False)
    rt = await runtime_for(cfg)
    try:
        target = MailTarget(cfg.mailboxes[0], "imap")
        t0 = time.monotonic()
        result = await rt.run_mail_probe(target)
        assert time.monotonic() - t0 < MAIL_TIMEOUT + 0.5
        assert not result.success and result.reason is Reason.TIMEOUT, (result.reason, result.detail)
        provider = rt.providers["app"]
        assert provider._last_error is None and provider._not_before == 0.0  # a waiter's timeout is no IdP failure
        await asyncio.sleep(IDP_DELAY + 0.5 - (time.monotonic() - t0))  # the shared acquisition completes
        assert provider.current is not None
        result = await rt.run_mail_probe(target)  # uses the token the abandoned wait left behind
        assert result.success, (result.reason, result.detail)
        assert env.state.token_requests(APP_ID) == 1
    finally:
        await rt.stop()


async def test_slow_idp_token_probe_gives_timeout(env: Env) -> None:
    slow_idp(env, delay=2.5)
    cfg = env.config(mailboxes=[{"address": "sales@contoso.example", "credential": "app", "checks": ["imap"]}],
                     timeout=1, network_checks=False)
    rt = await runtime_for(cfg)
    try:
        result = await rt.run_token_probe("app")
        assert result.reason is Reason.TIMEOUT, (result.reason, result.detail)
    finally:
        await rt.stop()


async def test_cancelling_a_probe_during_token_acquisition_ends_it(env: Env) -> None:
    slow_idp(env, delay=3.0)
    cfg = env.config(mailboxes=[{"address": "sales@contoso.example", "credential": "app", "checks": ["imap"]}],
                     timeout=5, network_checks=False)
    rt = await runtime_for(cfg)
    try:
        provider = rt.providers["app"]
        waiters = [asyncio.create_task(rt.run_token_probe("app")) for _ in range(2)]
        mail = asyncio.create_task(rt.run_mail_probe(MailTarget(cfg.mailboxes[0], "imap")))
        await asyncio.sleep(0.5)
        assert provider._inflight is not None and not provider._inflight.done()
        waiters[0].cancel()
        mail.cancel()
        done, _ = await asyncio.wait([waiters[0], mail], timeout=0.5)
        assert done == {waiters[0], mail}  # ended at once, not after the IdP answered
        assert waiters[0].cancelled() and mail.cancelled()  # the cancellation propagated
        assert provider._last_error is None and provider._not_before == 0.0
        result = await asyncio.wait_for(waiters[1], 5.0)  # the other joiner still gets the shared token
        assert result.success, (result.reason, result.detail)
        assert env.state.token_requests(APP_ID) == 1
    finally:
        await rt.stop()
