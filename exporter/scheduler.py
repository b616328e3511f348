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
- A semaphore bounds concurrent probes; the time spent waiting for a slot is recorded so
  saturation is visible. Every probe runs under `asyncio.timeout`, so a tarpit server costs
  one slot for at most the timeout.
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

log = logging.getLogger(__name__)

STARTUP_SPREAD = 5.0  # seconds over which first runs are spread
JITTER = 0.02  # +-2% of the interval
RETIRE_GRACE = 5.0  # a cancelled job task still running after its timeout + this is re-cancelled and logged
STOP_TIMEOUT = 10.0  # stop() waits at most this long for cancelled tasks


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
    def __init__(self, concurrency: int, on_wait: Callable[[float], None] | None = None) -> None:
        self.concurrency = concurrency
        self._sem = asyncio.Semaphore(concurrency)
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
            spread = job.phase * min(job.interval, STARTUP_SPREAD)  # the loop still adds its start-up delay
            await asyncio.sleep(max(0.0, last_start + job.interval * (1 - JITTER) - spread - time.monotonic()))

    async def run_now(self, job: Job) -> None:
        await self._run_once(job)

    @property
    def slot(self) -> asyncio.Semaphore:
        """The global concurrency limit, for on-demand probes (GET /probe) to share."""
        return self._sem

    async def _loop(self, job: Job, predecessors: set[asyncio.Task[None]] | None = None,
                    last_start: float | None = None) -> None:
        if predecessors or last_start is not None:
            await self._await_predecessors(job, predecessors or set(), last_start)
        origin = time.monotonic() + job.phase * job.interval  # this job's slot on its interval grid
        await asyncio.sleep(job.phase * min(job.interval, STARTUP_SPREAD))
        while not self._stopping:
            await self._run_once(job)
            # next grid slot at least half an interval away, plus a little jitter
            now = time.monotonic()
            k = max(0, math.ceil((now + job.interval / 2 - origin) / job.interval))
            nxt = origin + k * job.interval + random.uniform(-JITTER, JITTER) * job.interval
            await asyncio.sleep(max(0.05, nxt - now))

    async def _run_once(self, job: Job) -> None:
        waited_from = time.monotonic()
        self._last_start[job.key] = waited_from
        async with self._sem:
            if self._on_wait is not None:
                self._on_wait(time.monotonic() - waited_from)
            try:
                async with asyncio.timeout(job.timeout + 1.0):  # probes bound themselves; this is a backstop
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
