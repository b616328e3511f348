"""Scheduler: runs every probe job on its own interval with bounded global concurrency.

Why these rules:
- Deterministic phase (a hash of the job key) spreads thousands of jobs evenly over the
  interval and keeps each job's timing stable across restarts; a little random jitter
  avoids lock-step with other exporters. The first run of every job happens within a
  short start-up window so the exporter is ready quickly.
- One task per job, awaiting its own probe: a job never overlaps itself.
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
        self._on_wait = on_wait
        self._stopping = False

    @property
    def jobs(self) -> list[Job]:
        return [job for job, _ in self._tasks.values()]

    def set_jobs(self, jobs: list[Job]) -> None:
        """Replace the job set: unchanged jobs keep running; removed ones stop; new ones start."""
        wanted = {j.key: j for j in jobs}
        for key, (job, task) in list(self._tasks.items()):
            new = wanted.get(key)
            if new is None or (new.signature, new.interval, new.timeout) != (job.signature, job.interval, job.timeout):
                task.cancel()
                del self._tasks[key]
            else:
                job.run = new.run  # pick up the new closure (e.g. a new provider) without re-phasing
        for key, job in wanted.items():
            if key not in self._tasks:
                self._tasks[key] = (job, asyncio.create_task(self._loop(job), name="probe:" + "/".join(key)))

    async def run_now(self, job: Job) -> None:
        await self._run_once(job)

    @property
    def slot(self) -> asyncio.Semaphore:
        """The global concurrency limit, for on-demand probes (GET /probe) to share."""
        return self._sem

    async def _loop(self, job: Job) -> None:
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
        self._stopping = True
        tasks = [t for _, t in self._tasks.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
