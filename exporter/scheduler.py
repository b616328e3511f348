"""Scheduler: runs every probe job on its own interval with bounded global concurrency.

Why these rules:
- Deterministic phase (a hash of the job key) spreads thousands of jobs evenly over the
  interval and keeps each job's timing stable across restarts; a little random jitter
  avoids lock-step with other exporters. The first run of every job happens within a
  short start-up window so the exporter is ready quickly.
- One task per job, awaiting its own probe: a job never overlaps itself. A reload that
  changes a job cancels its task and starts the replacement, which waits until every
  retired task of the same key has ended before its first probe (re-cancelling a straggler
  after a bound and logging it), so a reload storm can never leave two copies probing.
  `settle()` lets a reload wait (bounded) until the retired tasks are gone. A replacement
  also keeps its predecessor's rhythm: its first probe is due one (new) interval after the
  predecessor's last one, so reloads never add logins or token requests.
- Two budgets: token refreshes (and other credential-level jobs) have their own small
  semaphore, so they never queue behind thousands of mail probes (a starved token job makes
  every mailbox of that credential look stale); mail and endpoint probes share the main one.
  The time spent waiting for a mail slot is recorded so saturation is visible. Every probe
  runs under `asyncio.timeout`, so a tarpit server costs one slot for at most the timeout.
- First runs are spread over a start-up window that grows with the job count
  (max(STARTUP_SPREAD, jobs / STARTUP_RATE)) instead of a burst; credential jobs start within
  STARTUP_SPREAD, since every mail probe needs their token. `caught_up()` tells readiness
  whether the schedule is being kept (no first run later than its timeout).
- Background probes run with transcripts off (probes/result.py): only `/probe?debug` and
  `check` read a transcript, and they run their own probe.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .probes.result import transcripts

log = logging.getLogger(__name__)

STARTUP_SPREAD = 5.0  # minimum seconds over which first runs are spread
STARTUP_RATE = 150.0  # first runs per second during start-up (window = jobs / rate, at least STARTUP_SPREAD)
JITTER = 0.02  # +-2% of the interval
RETIRE_GRACE = 5.0  # a cancelled job task still running after its timeout + this is re-cancelled and logged
STOP_TIMEOUT = 10.0  # stop() waits at most this long for cancelled tasks
LATE_AFTER = 2.0  # a probe starting later than this after its slot counts as a late start
TOKEN_KINDS = frozenset({"credential", "audit"})  # jobs on the token budget


def token_budget(concurrency: int) -> int:
    """Slots for token refreshes and app audits (MSAL runs them in threads; a few suffice)."""
    return max(2, min(8, concurrency // 4))


@dataclass(eq=False)
class Job:
    key: tuple[str, ...]
    interval: float
    timeout: float
    run: Callable[[], Awaitable[None]] = field(repr=False)
    signature: object = None  # same key, signature, interval and timeout: the job survives a reload untouched

    @property
    def phase(self) -> float:
        """Fraction in [0, 1) derived from the key: stable across restarts."""
        return (zlib.crc32("/".join(self.key).encode()) & 0xFFFFFFFF) / 2**32


class Scheduler:
    def __init__(self, concurrency: int, on_wait: Callable[[float], None] | None = None,
                 on_start: Callable[[float], None] | None = None) -> None:
        self.concurrency = concurrency
        self._sem = asyncio.Semaphore(concurrency)
        self._token_sem = asyncio.Semaphore(token_budget(concurrency))
        self._on_start = on_start  # lateness of each scheduled start vs its slot (seconds)
        self._first_due: dict[tuple[str, ...], float] = {}  # key -> monotonic deadline of its first run
        self._first_done: set[tuple[str, ...]] = set()
        self.window = STARTUP_SPREAD
        self._caught_up_n = -1
        self._tasks: dict[tuple[str, ...], tuple[Job, asyncio.Task[None]]] = {}
        # cancelled tasks of replaced/removed jobs that have not ended yet, by job key
        self._retiring: dict[tuple[str, ...], set[asyncio.Task[None]]] = {}
        self._last_start: dict[tuple[str, ...], float] = {}  # monotonic start of each job's last probe
        self._on_wait = on_wait
        self._stopping = False

    @property
    def jobs(self) -> list[Job]:
        return [job for job, _ in self._tasks.values()]

    def set_jobs(self, jobs: list[Job]) -> None:
        """Replace the job set: unchanged jobs keep running; removed ones stop; new ones start.

        A replaced or removed job's task is cancelled and kept as retiring until it ended; a
        replacement never probes before its predecessors ended (see module doc)."""
        wanted = {j.key: j for j in jobs}
        for key, (job, task) in list(self._tasks.items()):
            new = wanted.get(key)
            if new is None or (new.signature, new.interval, new.timeout) != (job.signature, job.interval, job.timeout):
                self._retire(key, task)
                del self._tasks[key]
            else:
                job.run = new.run  # pick up the new closure (e.g. a new provider) without re-phasing
        for key in [k for k in self._last_start if k not in wanted]:
            del self._last_start[key]
        for key, job in wanted.items():
            if key not in self._tasks:
                predecessors = set(self._retiring.get(key, ()))
                task = asyncio.create_task(self._loop(job, predecessors, self._last_start.get(key)),
                                           name="probe:" + "/".join(key))
                self._tasks[key] = (job, task)

    def _retire(self, key: tuple[str, ...], task: asyncio.Task[None]) -> None:
        task.cancel()
        if task.done():
            return
        self._retiring.setdefault(key, set()).add(task)
        task.add_done_callback(lambda t: self._retired(key, t))

    def _retired(self, key: tuple[str, ...], task: asyncio.Task[None]) -> None:
        bucket = self._retiring.get(key)
        if bucket is not None:
            bucket.discard(task)
            if not bucket:
                del self._retiring[key]

    @property
    def retiring(self) -> int:
        """Cancelled job tasks that have not ended yet."""
        return sum(len(b) for b in self._retiring.values())

    async def settle(self, timeout: float) -> bool:
        """Wait up to `timeout` for every retired task to end; True when none is left."""
        tasks = [t for b in self._retiring.values() for t in b]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return self.retiring == 0

    async def _await_predecessors(self, job: Job, tasks: set[asyncio.Task[None]], last_start: float | None) -> None:
        """Before a replacement's first probe: its predecessors ended, and its next run is due."""
        pending = {t for t in tasks if not t.done()}
        while pending:
            _, pending = await asyncio.wait(pending, timeout=job.timeout + RETIRE_GRACE)
            if pending:
                log.error("job %s: its previous task ignores cancellation; not starting a second copy",
                          "/".join(job.key))
                for t in pending:
                    t.cancel()
        if last_start is not None:  # keep the rhythm: due one interval after the last probe
            await asyncio.sleep(max(0.0, last_start + job.interval * (1 - JITTER) - time.monotonic()))

    async def run_now(self, job: Job) -> None:
        await self._run_once(job)

    @property
    def slot(self) -> asyncio.Semaphore:
        """The global concurrency limit, for on-demand probes (GET /probe) to share."""
        return self._sem

    def startup_window(self, jobs: int) -> float:
        return max(STARTUP_SPREAD, jobs / STARTUP_RATE)

    def caught_up(self) -> bool:
        """Large configs: every credential job ran once and no first run is late past its timeout.

        With a start-up window longer than STARTUP_SPREAD, waiting for the whole first round
        would make readiness take the window; instead the exporter is ready once it keeps its
        schedule (checks not yet due are exported as pending). Small configs: False (readiness
        is then the complete first round, runtime.ready()).
        """
        if self.window <= STARTUP_SPREAD or not self._first_due:
            return False
        if self._caught_up_n == len(self._first_due):
            return True  # stays true until jobs are added
        now = time.monotonic()
        for key, due in self._first_due.items():
            if key in self._tasks and key not in self._first_done and (key[0] in TOKEN_KINDS or due < now):
                return False
        self._caught_up_n = len(self._first_due)
        return True

    async def _loop(self, job: Job, predecessors: set[asyncio.Task[None]] | None = None,
                    last_start: float | None = None) -> None:
        if predecessors or last_start is not None:
            await self._await_predecessors(job, predecessors or set(), last_start)
        start = time.monotonic()
        origin = start + job.phase * job.interval  # this job's slot on its interval grid
        if last_start is not None:
            delay = 0.0  # a replacement: _await_predecessors already waited for its predecessor's rhythm
            origin = start
        elif job.key[0] in TOKEN_KINDS:
            delay = job.phase * min(job.interval, STARTUP_SPREAD)
        else:
            self.window = self.startup_window(len(self._tasks))
            delay = job.phase * min(job.interval, self.window)
        due = self._first_due[job.key] = start + delay + job.timeout + 1.0
        slot = start + delay
        try:
            await asyncio.sleep(delay)
            while not self._stopping:
                await self._run_once(job, slot)
                self._first_done.add(job.key)
                # next grid slot at least half an interval away, plus a little jitter
                now = time.monotonic()
                k = max(0, math.ceil((now + job.interval / 2 - origin) / job.interval))
                slot = origin + k * job.interval + random.uniform(-JITTER, JITTER) * job.interval
                await asyncio.sleep(max(0.05, slot - now))
        finally:
            if job.key not in self._tasks and self._first_due.get(job.key) == due:  # removed, not replaced
                del self._first_due[job.key]
                self._first_done.discard(job.key)

    async def _run_once(self, job: Job, slot: float | None = None) -> None:
        waited_from = time.monotonic()
        self._last_start[job.key] = waited_from
        token_job = job.key[0] in TOKEN_KINDS
        async with self._token_sem if token_job else self._sem:
            started = time.monotonic()
            if self._on_wait is not None and not token_job:
                self._on_wait(started - waited_from)
            if self._on_start is not None and slot is not None:
                self._on_start(max(0.0, started - slot))
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
        """Cancel every job task and wait (bounded) until they ended."""
        self._stopping = True
        tasks = [t for _, t in self._tasks.values()] + [t for b in self._retiring.values() for t in b]
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            if pending:
                log.error("%d probe task(s) did not stop within %.0f s", len(pending), STOP_TIMEOUT)
