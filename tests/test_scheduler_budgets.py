"""Scheduler budgets and start-up: token jobs never queue behind mail probes, first runs are
spread over a window that grows with the job count, background probes record no transcript."""

from __future__ import annotations

import asyncio

import pytest

from exporter import scheduler as sched
from exporter.probes.result import ProbeResult, Transcript
from exporter.scheduler import Job, Scheduler


@pytest.fixture(autouse=True)
def fast_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sched, "STARTUP_SPREAD", 0.2)


async def test_token_job_runs_while_mail_slots_are_saturated() -> None:
    release = asyncio.Event()
    mail_running = 0
    token_runs = 0

    async def mail() -> None:
        nonlocal mail_running
        mail_running += 1
        await release.wait()  # a tarpit: holds its slot

    async def token() -> None:
        nonlocal token_runs
        token_runs += 1

    s = Scheduler(concurrency=4)
    jobs = [Job(("mailbox", f"m{i}", "imap"), 60, 30, mail) for i in range(20)]
    s.set_jobs([*jobs, Job(("credential", "app"), 0.2, 5, token)])
    try:
        for _ in range(100):
            if mail_running == 4 and token_runs >= 3:
                break
            await asyncio.sleep(0.05)
        assert mail_running == 4  # every mail slot held, 16 mail jobs queued
        assert token_runs >= 3  # yet the token job keeps its cadence
    finally:
        release.set()
        await s.stop()


def test_startup_window_scales_with_job_count() -> None:
    s = Scheduler(concurrency=4)
    assert s.startup_window(10) == sched.STARTUP_SPREAD
    assert s.startup_window(30_000) == pytest.approx(30_000 / sched.STARTUP_RATE)


async def test_first_runs_spread_over_the_window_and_caught_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sched, "STARTUP_RATE", 200.0)  # 200 jobs -> a 1 s window
    starts: list[float] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def run() -> None:
        starts.append(loop.time() - t0)

    lateness: list[float] = []
    s = Scheduler(concurrency=64, on_start=lateness.append)
    s.set_jobs([Job(("mailbox", f"m{i}", "imap"), 60, 0.5, run) for i in range(200)])
    try:
        assert not s.caught_up()
        await asyncio.sleep(1.3)
        assert len(starts) == 200
        assert s.window == pytest.approx(1.0)
        assert max(starts) > 0.7 and sum(1 for t in starts if t < 0.25) < 100  # spread, not a burst
        assert max(lateness) < 0.5
        assert s.caught_up()
    finally:
        await s.stop()


async def test_not_caught_up_while_due_first_runs_are_starved_then_latched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A start-up backlog: first runs due by more than their timeout that have not got a slot
    keep readiness off; once the backlog drains it turns on and stays on (no flapping)."""
    monkeypatch.setattr(sched, "STARTUP_RATE", 100.0)  # 100 jobs -> a 1 s window
    release = asyncio.Event()
    ran: list[str] = []

    keys = [("mailbox", f"m{i}", "imap") for i in range(100)]
    blocker = min(keys, key=lambda k: Job(k, 60, 0.2, release.wait).phase)[1]  # the first to run

    def mk(name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            ran.append(name)
            if name == blocker:
                await release.wait()  # holds the only slot: everyone else queues behind it

        return run

    s = Scheduler(concurrency=1)
    jobs = [Job(k, 60, 30 if k[1] == blocker else 0.2, mk(k[1])) for k in keys]  # no backstop for the blocker
    s.set_jobs([*jobs, Job(("credential", "app"), 60, 0.2, mk("token"))])
    try:
        for _ in range(40):  # the token job runs on its own budget
            if "token" in ran:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)  # every first run is due by now, the earliest by more than 0.2 s + 1 s
        assert sorted(ran) == sorted(["token", blocker])  # the slot is held: a backlog
        assert not s.caught_up()
        assert 0.0 < s.first_run_backlog() < 2.0  # what /-/ready reports: seconds behind
        release.set()
        for _ in range(60):
            if len(ran) == 101:
                break
            await asyncio.sleep(0.05)
        assert len(ran) == 101
        assert s.caught_up() and s.first_run_backlog() == 0.0
        assert not s._first_heap  # every first run started: the start-up bookkeeping is gone
        release.clear()  # the blocker holds the slot again on its next run: readiness stays latched
        assert s.caught_up()
    finally:
        release.set()
        await s.stop()


async def test_background_probes_record_no_transcript() -> None:
    seen: list[Transcript] = []

    async def run() -> None:
        t = Transcript()
        t.client("A1 CAPABILITY")
        seen.append(t)

    s = Scheduler(concurrency=2)
    s.set_jobs([Job(("mailbox", "m", "imap"), 60, 5, run)])
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.05)
    await s.stop()
    assert seen and seen[0].lines == []
    direct = ProbeResult.ok(0.1).transcript  # /probe?debug and `check` run outside the scheduler
    direct.client("A1 CAPABILITY")
    assert direct.lines == [("C", "A1 CAPABILITY")]
