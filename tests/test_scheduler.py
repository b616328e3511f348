"""Scheduler: no self-overlap, bounded concurrency, timeout backstop, stable phase, reload diff."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from exporter import scheduler as sched
from exporter.scheduler import Job, Scheduler


@pytest.fixture(autouse=True)
def fast_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sched, "STARTUP_SPREAD", 0.2)


async def test_job_never_overlaps_itself() -> None:
    running = 0
    peak = 0
    runs = 0

    async def slow() -> None:
        nonlocal running, peak, runs
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.3)  # longer than the interval
        running -= 1
        runs += 1

    s = Scheduler(concurrency=8)
    s.set_jobs([Job(("j",), interval=0.1, timeout=5, run=slow)])
    await asyncio.sleep(1.2)
    await s.stop()
    assert peak == 1
    assert runs >= 2


async def test_global_concurrency_is_bounded_and_wait_is_reported() -> None:
    active = 0
    peak = 0
    waits: list[float] = []

    async def work() -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.1)
        active -= 1

    s = Scheduler(concurrency=3, on_wait=waits.append)
    s.set_jobs([Job((f"j{i}",), interval=0.2, timeout=5, run=work) for i in range(20)])
    await asyncio.sleep(1.0)
    await s.stop()
    assert peak == 3
    assert max(waits) > 0.05  # saturation is visible


async def test_hanging_probe_costs_at_most_its_timeout_and_loop_survives() -> None:
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3600)

    s = Scheduler(concurrency=2)
    s.set_jobs([Job(("hang",), interval=0.1, timeout=0.2, run=hang)])
    await asyncio.sleep(3.0)  # timeout 0.2 + 1.0 backstop per run
    await s.stop()
    assert calls >= 2


async def test_crashing_probe_does_not_kill_its_loop() -> None:
    calls = 0

    async def boom() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    s = Scheduler(concurrency=2)
    s.set_jobs([Job(("boom",), interval=0.1, timeout=1, run=boom)])
    await asyncio.sleep(0.8)
    await s.stop()
    assert calls >= 3


async def test_set_jobs_keeps_unchanged_and_stops_removed() -> None:
    counts: dict[str, int] = {"a": 0, "b": 0, "c": 0}

    def mk(name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            counts[name] += 1

        return run

    s = Scheduler(concurrency=4)
    s.set_jobs([Job(("a",), 0.1, 1, mk("a"), "sig"), Job(("b",), 0.1, 1, mk("b"), "sig")])
    await asyncio.sleep(0.5)
    entry_a = s._entries[("a",)]
    s.set_jobs([Job(("a",), 0.1, 1, mk("a"), "sig"), Job(("c",), 0.1, 1, mk("c"), "sig")])
    assert s._entries[("a",)] is entry_a  # unchanged job kept its entry (no re-phasing)
    s.set_jobs([Job(("a",), 0.1, 2, mk("a"), "sig"), Job(("c",), 0.1, 1, mk("c"), "sig")])
    assert s._entries[("a",)] is not entry_a  # a new timeout restarts the job with the new backstop
    assert s._entries[("a",)].job.timeout == 2
    b_before = counts["b"]
    await asyncio.sleep(0.5)
    await s.stop()
    assert counts["b"] == b_before
    assert counts["c"] >= 2


def test_phase_is_deterministic_and_spread() -> None:
    noop = lambda: None  # noqa: E731
    phases = [Job(("mailbox", f"m{i}@x", "imap"), 60, 5, noop).phase for i in range(1000)]  # type: ignore[arg-type]
    assert phases == [Job(("mailbox", f"m{i}@x", "imap"), 60, 5, noop).phase for i in range(1000)]  # type: ignore[arg-type]
    buckets = [0] * 10
    for p in phases:
        assert 0 <= p < 1
        buckets[int(p * 10)] += 1
    assert min(buckets) > 60  # roughly uniform: no burst at one point of the interval


async def test_replacement_never_runs_before_its_cancelled_predecessor_ended() -> None:
    """A job task slow to end after cancellation (cleanup, a bug) must not overlap its replacement."""
    events: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()

    async def sticky() -> None:
        events.append(("old-start", loop.time()))
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            await asyncio.sleep(0.4)  # slow cleanup: the task ends 0.4 s after cancel()
            events.append(("old-end", loop.time()))
            raise

    async def quick() -> None:
        events.append(("new-run", loop.time()))

    s = Scheduler(concurrency=4)
    s.set_jobs([Job(("j",), 0.1, 200, sticky, "v1")])
    await asyncio.sleep(0.4)
    s.set_jobs([Job(("j",), 0.1, 200, quick, "v2")])
    s.set_jobs([Job(("j",), 0.1, 200, quick, "v3")])  # a second reload while the first copy still ends
    assert s.retiring >= 1
    assert await s.settle(2.0)
    await asyncio.sleep(0.3)
    await s.stop()
    names = [e for e, _ in events]
    assert names[0] == "old-start" and "old-end" in names and "new-run" in names
    old_end = next(t for e, t in events if e == "old-end")
    assert all(t >= old_end for e, t in events if e == "new-run")
    assert s.retiring == 0


async def test_a_replaced_job_keeps_its_rhythm_across_reloads() -> None:
    """Reloading every 300 ms must not make a 1 s job run more than once a second."""
    loop = asyncio.get_running_loop()
    runs: list[float] = []

    async def run() -> None:
        runs.append(loop.time())

    s = Scheduler(concurrency=4)
    s.set_jobs([Job(("j",), 1.0, 0.5, run, "v")])
    await asyncio.sleep(0.3)  # the first run (start-up spread 0.2 s here)
    assert len(runs) == 1
    t0 = runs[0]
    for i in range(9):  # 2.7 s of reloads, each a new signature (restart), slower than the start-up spread
        s.set_jobs([Job(("j",), 1.0, 0.5, run, f"v{i}")])
        await asyncio.sleep(0.3)
    elapsed = loop.time() - t0
    await s.stop()
    assert 1 <= len(runs) <= int(elapsed) + 1, runs
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(runs)), runs
