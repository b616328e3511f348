"""TimerHeap (exporter/timerheap.py): the scheduler's timers on one loop handle, under asyncio and uvloop."""

from __future__ import annotations

import asyncio

import pytest

from exporter import timerheap
from exporter.timerheap import TimerHeap

LOOPS = ["asyncio", "uvloop"]


def run(loop_kind: str, coro_fn):  # type: ignore[no-untyped-def]
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            return r.run(coro_fn())
    return asyncio.run(coro_fn())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_fires_in_deadline_order_never_early_and_cancelled_never(loop_kind: str) -> None:
    async def main() -> list[tuple[str, float, float]]:
        loop = asyncio.get_running_loop()
        heap, fired = TimerHeap(), []
        t0 = loop.time()

        def cb(name: str) -> None:
            fired.append((name, loop.time(), when[name]))

        when = {"c": t0 + 0.09, "a": t0 + 0.03, "b": t0 + 0.06, "x": t0 + 0.045, "d": t0 + 0.12}
        handles = {name: heap.call_at(w, cb, name) for name, w in when.items()}
        heap.cancel(handles["x"])
        heap.cancel(handles["x"])  # twice: no effect
        assert len(heap) == 4
        await asyncio.sleep(0.2)
        assert len(heap) == 0
        heap.cancel(handles["a"])  # already fired: no effect
        assert len(heap) == 0
        return fired

    fired = run(loop_kind, main)
    assert [f[0] for f in fired] == ["a", "b", "c", "d"]
    for _name, at, due in fired:
        assert at >= due - timerheap.RESOLUTION


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_one_loop_handle_for_many_timers_and_ties_in_arming_order(loop_kind: str) -> None:
    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        heap, fired = TimerHeap(), []
        at = loop.time() + 0.05
        for i in range(2000):
            heap.call_at(at, fired.append, i)
        # one handle on the loop (asyncio's scheduled list; uvloop does not expose it)
        scheduled = len(getattr(loop, "_scheduled", [None]))
        await asyncio.sleep(0.15)
        return fired, scheduled

    fired, scheduled = run(loop_kind, main)
    assert fired == list(range(2000))
    assert scheduled == 1


def test_earlier_timer_rearms_and_a_raising_callback_does_not_lose_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        heap, fired = TimerHeap(), []

        def boom(_: object) -> None:
            raise RuntimeError("bug in a callback")

        heap.call_at(loop.time() + 0.10, fired.append, "late")
        heap.call_at(loop.time() + 0.02, boom, None)  # earlier than the armed handle: re-armed for it
        heap.call_at(loop.time() + 0.02, fired.append, "after-boom")
        await asyncio.sleep(0.05)
        assert fired == ["after-boom"]
        await asyncio.sleep(0.1)
        return fired

    assert asyncio.run(main()) == ["after-boom", "late"]
    assert "bug in a callback" in caplog.text


def test_firing_is_bounded_per_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timerheap, "MAX_FIRE", 10)

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        heap, fired, turns = TimerHeap(), [], []
        for i in range(35):
            heap.call_at(loop.time(), fired.append, i)

        async def other() -> None:  # other loop work interleaves between bounded batches
            for _ in range(10):
                turns.append(len(fired))
                await asyncio.sleep(0)

        await other()
        await asyncio.sleep(0.02)
        assert fired == list(range(35))
        return turns

    turns = asyncio.run(main())
    assert any(0 < n < 35 for n in turns), turns  # the loop ran between batches of at most 10


def test_cancelling_most_compacts_the_heap_and_clear_stops_everything() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        heap, fired = TimerHeap(), []
        handles = [heap.call_at(loop.time() + 10 + i, fired.append, i) for i in range(5000)]
        for h in handles[:-3]:
            heap.cancel(h)
        assert len(heap) == 3
        assert len(heap._heap) <= 2 * 3 + 1024 + 1
        heap.clear()
        assert len(heap) == 0 and heap._handle is None
        heap.call_at(loop.time() + 0.01, fired.append, "new")
        await asyncio.sleep(0.05)
        assert fired == ["new"]

    asyncio.run(main())
