"""TimerHeap: many one-shot timers behind a single event-loop timer.

Why: the scheduler keeps one armed timer per job between probes (30,000 at 10,000 mailboxes x 3
checks). A `loop.call_at` handle is ~650 bytes under uvloop (the handle, its libuv timer, the
argument tuple, a context copy), 19 MiB at 10,000 mailboxes, the largest single allocation site
of a steady exporter (tracemalloc, bench/README.md). Here a timer is one small list in a heap,
and only the earliest one holds a loop handle. Arming and firing stay O(log n); a cancelled
timer is dropped lazily when it reaches the top (or the heap is compacted when most of it is
cancelled), so cancelling is O(1).

Timers fire in deadline order, each in its own callback run, never before their time (the
loop's clock has millisecond resolution under uvloop, so "due" allows one clock tick).
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
from collections.abc import Callable
from typing import Any

RESOLUTION = 0.001  # uvloop's clock ticks in milliseconds; a timer this close to due is due
MAX_FIRE = 10_000  # timers fired per loop callback at most (then the loop runs its other work)


class Timer(list):  # type: ignore[type-arg]  # [when, seq, callback, arg]: a list is the smallest mutable record
    """A handle on one armed timer; `cancel()` is all a caller does with it."""

    __slots__ = ()

    @property
    def when(self) -> float:
        return float(self[0])

    @property
    def cancelled(self) -> bool:
        return self[2] is None

    def cancel(self) -> None:
        self[2] = self[3] = None


class TimerHeap:
    """One-shot timers on the running loop's clock, one loop handle for all of them."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = itertools.count()  # ties fire in arming order
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = float("inf")
        self._handle_loop: asyncio.AbstractEventLoop | None = None
        self._live = 0  # armed, not cancelled, not fired (compaction decides on it)
        # callbacks run in one fixed context, as the scheduler's timers always did (not in the
        # context of whichever task happened to arm the earliest timer)
        self._context = contextvars.copy_context()

    def __len__(self) -> int:
        return self._live

    def call_at(self, when: float, callback: Callable[[Any], None], arg: Any) -> Timer:
        """Call `callback(arg)` at loop time `when` (or soon after); returns the timer to cancel."""
        timer = Timer((when, next(self._seq), callback, arg))
        heapq.heappush(self._heap, timer)
        self._live += 1
        loop = asyncio.get_running_loop()
        if when < self._handle_at or loop is not self._handle_loop:
            self._rearm(loop)
        return timer

    def cancel(self, timer: Timer) -> None:
        if not timer.cancelled:
            timer.cancel()
            self._live -= 1
            if len(self._heap) > 2 * self._live + 1024:  # mostly cancelled: rebuild, O(n) once per n cancels
                self._heap = [t for t in self._heap if not t.cancelled]
                heapq.heapify(self._heap)

    def clear(self) -> None:
        """Cancel every timer and the loop handle."""
        for timer in self._heap:
            timer.cancel()
        self._heap.clear()
        self._live = 0
        if self._handle is not None:
            self._handle.cancel()
            self._handle, self._handle_at = None, float("inf")

    def _rearm(self, loop: asyncio.AbstractEventLoop) -> None:
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)
        if self._handle is not None:
            self._handle.cancel()
            self._handle, self._handle_at = None, float("inf")
        if heap:
            self._handle_at, self._handle_loop = heap[0].when, loop
            self._handle = loop.call_at(self._handle_at, self._run, context=self._context)

    def _run(self) -> None:
        """The loop handle fired: run every due timer (bounded), then arm for the next one."""
        self._handle, self._handle_at = None, float("inf")
        loop = asyncio.get_running_loop()
        heap = self._heap
        due = loop.time() + RESOLUTION
        try:
            for _ in range(MAX_FIRE):
                if not heap or heap[0][0] > due:
                    break
                timer = heapq.heappop(heap)
                callback, arg = timer[2], timer[3]
                if callback is None:
                    continue
                timer.cancel()  # fired: a later cancel() of this handle is a no-op
                self._live -= 1
                callback(arg)
        finally:
            self._rearm(loop)
