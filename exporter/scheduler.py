"""Scheduler: runs every probe job on its own interval with bounded global concurrency.

Why these rules:
- Deterministic phase (a hash of the job key) spreads thousands of jobs evenly over the
  interval and keeps each job's timing stable across restarts; a little random jitter
  avoids lock-step with other exporters. The first run of every job happens within a
  short start-up window so the exporter is ready quickly.
- A job is a timer between probes and a task only while it probes: one entry in a timer
  heap per job (timerheap.py: one loop handle for all of them) instead of one sleeping task
  (at 10,000 mailboxes x 3 checks a sleeping task per job was ~41 MiB and the largest share
  of the loop's bookkeeping; a `loop.call_at` handle per job was still 19 MiB). The task
  arms the job's next timer when its probe ends, so a job never overlaps itself.
- A reload that changes a job disarms its timer and cancels its probe task; the
  replacement waits until every retired task of the same key has ended before its first
  probe (re-cancelling a straggler after a bound and logging it), so a reload storm can
  never leave two copies probing. `settle()` lets a reload wait (bounded) until the
  retired tasks are gone. A replacement also keeps its predecessor's rhythm: its first
  probe is due one (new) interval after the predecessor's last one, so reloads never add
  logins or token requests.
- Two budgets: token refreshes (and other credential-level jobs) have their own small
  semaphore, so they never queue behind thousands of mail probes (a starved token job makes
  every mailbox of that credential look stale); mail and endpoint probes share the main one.
  The time spent waiting for a mail slot is recorded so saturation is visible. Every probe
  runs under `asyncio.timeout`, so a tarpit server costs one slot for at most the timeout.
- First runs are spread over a start-up window that grows with the job count
  (max(STARTUP_SPREAD, jobs / STARTUP_RATE)) instead of a burst; credential jobs start within
  STARTUP_SPREAD, since every mail probe needs their token. `caught_up()` tells readiness
  whether the schedule is being kept: every credential job ran once and no first run is
  still waiting (for its timer or a slot) more than its timeout past its slot.
- Background probes run with transcripts off (probes/result.py): only `/probe?debug` and
  `check` read a transcript, and they run their own probe.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .probes.result import transcripts
from .store import Key
from .timerheap import Timer, TimerHeap

log = logging.getLogger(__name__)

STARTUP_SPREAD = 5.0  # minimum seconds over which first runs are spread
STARTUP_RATE = 100.0  # first runs per second during start-up (window = jobs / rate, at least STARTUP_SPREAD):
# the steady rate of 10,000 mailboxes x 3 checks at 300 s, so start-up is never busier than steady state there
JITTER = 0.02  # +-2% of the interval
RETIRE_GRACE = 5.0  # a cancelled job task still running after its timeout + this is re-cancelled and logged
STOP_TIMEOUT = 10.0  # stop() waits at most this long for cancelled tasks
LATE_AFTER = 2.0  # a probe starting later than this after its slot counts as a late start
MIN_GAP = 0.05  # seconds between the end of a probe and the job's next start, at least
TOKEN_KINDS = frozenset({"credential", "audit"})  # jobs on the token budget

def token_budget(concurrency: int) -> int:
    """Slots for token refreshes and app audits (MSAL runs them in threads; a few suffice)."""
    return max(2, min(8, concurrency // 4))


@dataclass(eq=False, slots=True)  # 30,000 of them at 10,000 mailboxes: no __dict__ each
class Job:
    key: Key
    interval: float
    timeout: float
    run: Callable[[], Awaitable[object]] = field(repr=False)
    signature: object = None  # same key, signature, interval and timeout: the job survives a reload untouched

    @property
    def phase(self) -> float:
        """Fraction in [0, 1) derived from the key: stable across restarts."""
        return (zlib.crc32("/".join(self.key).encode()) & 0xFFFFFFFF) / 2**32

    @property
    def name(self) -> str:
        return "probe:" + "/".join(self.key)


class _Entry:
    """One scheduled job: armed (`timer`), probing or waiting for predecessors (`task`)."""

    __slots__ = ("job", "origin", "slot", "task", "timer")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.origin = 0.0  # this job's slot on its interval grid (loop time)
        self.slot = 0.0  # when the current/next run is due (loop time)
        self.timer: Timer | None = None
        self.task: asyncio.Task[None] | None = None

    def disarm(self, timers: TimerHeap) -> None:
        if self.timer is not None:
            timers.cancel(self.timer)
            self.timer = None


class Scheduler:
    def __init__(self, concurrency: int, on_wait: Callable[[float], None] | None = None,
                 on_start: Callable[[float], None] | None = None) -> None:
        self.concurrency = concurrency
        self._sem = asyncio.Semaphore(concurrency)
        self._token_sem = asyncio.Semaphore(token_budget(concurrency))
        self._on_start = on_start  # lateness of each scheduled start vs its slot (seconds)
        self._on_wait = on_wait
        # start-up bookkeeping for caught_up(): mail/endpoint jobs whose first run has not
        # started (key -> loop-time slot, plus a heap of (slot, key) with lazy deletion) and
        # credential/audit jobs whose first run has not ended
        self._first_due: dict[Key, float] = {}
        self._first_heap: list[tuple[float, Key]] = []
        self._first_tokens: set[Key] = set()
        self._caught_up = False  # latched once true, until new jobs arrive
        self._ran_any = False  # some scheduled probe has ended: the pipeline works at all
        self.window = STARTUP_SPREAD
        self._entries: dict[Key, _Entry] = {}
        self._timers = TimerHeap()  # every armed job's next start, on one loop timer (timerheap.py)
        # cancelled tasks of replaced/removed jobs that have not ended yet, by job key
        self._retiring: dict[Key, set[asyncio.Task[None]]] = {}
        self._last_start: dict[Key, float] = {}  # loop time of each job's last probe start
        self._stopping = False

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    @property
    def jobs(self) -> list[Job]:
        return [e.job for e in self._entries.values()]

    def set_jobs(self, jobs: list[Job]) -> None:
        """Replace the job set: unchanged jobs keep their rhythm; removed ones stop; new ones start.

        A replaced or removed job's timer is disarmed and its task cancelled and kept as
        retiring until it ended; a replacement never probes before its predecessors ended."""
        wanted = {j.key: j for j in jobs}
        for key, entry in list(self._entries.items()):
            new = wanted.get(key)
            job = entry.job
            if new is None or (new.signature, new.interval, new.timeout) != (job.signature, job.interval, job.timeout):
                del self._entries[key]
                self._retire(key, entry)
            else:
                job.run = new.run  # pick up the new closure (e.g. a new provider) without re-phasing
        for key in [k for k in self._last_start if k not in wanted]:
            del self._last_start[key]
        now = self._loop.time()
        fresh = [job for key, job in wanted.items() if key not in self._entries]
        if fresh:
            self._caught_up = False
            if any(job.key[0] not in TOKEN_KINDS for job in fresh):
                self.window = self.startup_window(len(wanted))
        for job in fresh:
            entry = self._entries[job.key] = _Entry(job)
            predecessors = {t for t in self._retiring.get(job.key, ()) if not t.done()}
            last_start = self._last_start.get(job.key)
            if predecessors:
                entry.task = asyncio.create_task(self._after_predecessors(entry, predecessors, last_start),
                                                 name=job.name)
                continue
            self._plan_first(entry, now, last_start)

    def _plan_first(self, entry: _Entry, now: float, last_start: float | None) -> None:
        job = entry.job
        if last_start is not None:  # a replacement keeps its predecessor's rhythm
            entry.origin = max(now, last_start + job.interval * (1 - JITTER))
            self._arm(entry, entry.origin)
            return
        entry.origin = now + job.phase * job.interval
        spread = STARTUP_SPREAD if job.key[0] in TOKEN_KINDS else self.window
        first = now + job.phase * min(job.interval, spread)
        if job.key[0] in TOKEN_KINDS:
            self._first_tokens.add(job.key)
        else:
            self._first_due[job.key] = first
            heapq.heappush(self._first_heap, (first, job.key))
        self._arm(entry, first)

    def _arm(self, entry: _Entry, when: float) -> None:
        entry.slot = when
        entry.task = None
        entry.timer = self._timers.call_at(when, self._fire, entry)

    def _fire(self, entry: _Entry) -> None:
        entry.timer = None
        if self._stopping or self._entries.get(entry.job.key) is not entry:
            return
        entry.task = asyncio.create_task(self._probe(entry), name=entry.job.name)

    async def _probe(self, entry: _Entry) -> None:
        job = entry.job
        try:
            await self._run_once(job, entry.slot)
        finally:
            self._first_tokens.discard(job.key)
            self._ran_any = True
            if not self._stopping and self._entries.get(job.key) is entry:
                # next grid slot at least half an interval away, plus a little jitter
                now = self._loop.time()
                k = max(0, math.ceil((now + job.interval / 2 - entry.origin) / job.interval))
                slot = entry.origin + k * job.interval + random.uniform(-JITTER, JITTER) * job.interval
                self._arm(entry, max(now + MIN_GAP, slot))

    async def _after_predecessors(self, entry: _Entry, tasks: set[asyncio.Task[None]],
                                  last_start: float | None) -> None:
        """A replacement: wait until its predecessors ended, then plan its first run."""
        job = entry.job
        pending = tasks
        while pending:
            _, pending = await asyncio.wait(pending, timeout=job.timeout + RETIRE_GRACE)
            if pending:
                log.error("job %s: its previous task ignores cancellation; not starting a second copy",
                          "/".join(job.key))
                for t in pending:
                    t.cancel()
        if not self._stopping and self._entries.get(job.key) is entry:
            self._plan_first(entry, self._loop.time(), self._last_start.get(job.key, last_start))

    def _retire(self, key: Key, entry: _Entry) -> None:
        entry.disarm(self._timers)
        self._first_started(key)  # a replacement plans its own first run
        self._first_tokens.discard(key)
        task = entry.task
        if task is None:
            return
        task.cancel()
        if task.done():
            return
        self._retiring.setdefault(key, set()).add(task)
        task.add_done_callback(lambda t: self._retired(key, t))

    def _retired(self, key: Key, task: asyncio.Task[None]) -> None:
        bucket = self._retiring.get(key)
        if bucket is not None:
            bucket.discard(task)
            if not bucket:
                del self._retiring[key]

    @property
    def retiring(self) -> int:
        """Cancelled job tasks that have not ended yet."""
        return sum(len(b) for b in self._retiring.values())

    def armed(self) -> list[str]:
        """Names of the jobs waiting on a timer (the rest are probing or waiting for predecessors).

        With the live `probe:` tasks this is every copy of every job: exactly one per configured
        job once a reload settled (tests/test_reload_storm.py counts both)."""
        return [e.job.name for e in self._entries.values() if e.timer is not None]

    async def settle(self, timeout: float) -> bool:
        """Wait up to `timeout` for every retired task to end; True when none is left."""
        tasks = [t for b in self._retiring.values() for t in b]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return self.retiring == 0

    async def run_now(self, job: Job) -> None:
        await self._run_once(job)

    @property
    def slot(self) -> asyncio.Semaphore:
        """The global concurrency limit, for on-demand probes (GET /probe) to share."""
        return self._sem

    def startup_window(self, jobs: int) -> float:
        return max(STARTUP_SPREAD, jobs / STARTUP_RATE)

    def caught_up(self) -> bool:
        """Large configs: every credential job and some probe ran, and first runs keep their schedule.

        With a start-up window longer than STARTUP_SPREAD, waiting for the whole first round
        would make readiness take the window; instead the exporter is ready once it keeps its
        schedule (checks not yet due are exported as pending): no first run due by more than its
        timeout is still waiting for its timer or a slot. True stays true until jobs are added,
        so readiness does not flap; O(log n) per call (a heap of first-run slots). Small
        configs: False (readiness is then the complete first round, runtime.ready()).
        """
        if self._caught_up:
            return True
        if self.window <= STARTUP_SPREAD or self._first_tokens or not self._ran_any:
            return False
        if self.first_run_backlog() > 0:
            return False
        self._caught_up = True
        return True

    def _first_started(self, key: Key) -> None:
        """`key`'s first run got a slot (or the job went): forget its slot; keep the heap bounded."""
        if self._first_due.pop(key, None) is None:
            return
        if not self._first_due:
            self._first_heap.clear()
        elif len(self._first_heap) > 2 * len(self._first_due) + 1024:  # mostly stale entries: rebuild
            self._first_heap = [(due, k) for k, due in self._first_due.items()]
            heapq.heapify(self._first_heap)

    def first_run_backlog(self) -> float:
        """Seconds the earliest first run still waiting (for its timer or a slot) is past its slot
        plus its timeout (0: none is); what readiness waits on for large configs. O(log n): a heap
        of first-run slots (jobs share a timeout in practice, so the earliest slot decides)."""
        heap = self._first_heap
        while heap and self._first_due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # started, removed or re-planned
        if not heap:
            return 0.0
        due, key = heap[0]
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        return max(0.0, self._loop.time() - due - entry.job.timeout - 1.0)

    async def _run_once(self, job: Job, slot: float | None = None) -> None:
        loop = self._loop
        waited_from = loop.time()
        self._last_start[job.key] = waited_from
        token_job = job.key[0] in TOKEN_KINDS
        async with self._token_sem if token_job else self._sem:
            started = loop.time()
            self._first_started(job.key)
            if self._on_start is not None and slot is not None:
                self._on_start(max(0.0, started - slot))
            if self._on_wait is not None and not token_job:
                self._on_wait(started - waited_from)
            try:
                async with asyncio.timeout(job.timeout + 1.0):  # probes bound themselves; this is a backstop
                    with transcripts(False):  # nobody reads a background probe's transcript
                        await job.run()
            except TimeoutError:
                log.warning("probe %s exceeded its timeout backstop", "/".join(job.key))
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a probe must not kill its job loop
                log.exception("probe %s crashed", "/".join(job.key))

    async def stop(self) -> None:
        """Disarm every timer, cancel every job task and wait (bounded) until they ended."""
        self._stopping = True
        tasks: list[asyncio.Task[None]] = []
        for entry in self._entries.values():
            entry.disarm(self._timers)
            if entry.task is not None:
                tasks.append(entry.task)
        tasks += [t for b in self._retiring.values() for t in b]
        self._entries.clear()
        self._timers.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            if pending:
                log.error("%d probe task(s) did not stop within %.0f s", len(pending), STOP_TIMEOUT)
