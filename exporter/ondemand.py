"""On-demand probes (GET /probe): their own small pool, single-flight and a minimum spacing.

Why: `/probe` makes a live login to Microsoft 365. Unprotected, 2,000 requests made 2,000
logins in 9 s, and 200 concurrent requests against a tarpit delayed scheduled probes by 12 s
(they shared the scheduler's slots). The rules:

- A small pool of its own (`pool_size`, default 2): on-demand probes never take a scheduled
  probe's slot; at most `max_waiting` requests queue for it, the rest get 429 + Retry-After.
- Per target (mailbox x check; the token check per credential, since that is what logs in),
  at most one live probe per `min_interval` (default 30 s). Concurrent requests for a target
  share one probe (single-flight). Inside the spacing, a request gets the most recent result
  (from this or from a scheduled probe) marked as not live with its age.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .probes.result import ProbeResult

DEFAULT_MIN_INTERVAL = 30.0
DEFAULT_POOL_SIZE = 2
DEFAULT_MAX_WAITING = 16


@dataclass(frozen=True)
class Answer:
    result: ProbeResult
    live: bool  # False: a recorded result served inside the spacing
    age: float  # seconds since the result finished
    retry_after: float  # seconds until a live probe of this target is allowed again


class Busy(Exception):
    """Too many on-demand probes queued; answer 429 with Retry-After."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("on-demand probe pool busy")
        self.retry_after = retry_after


class OnDemand:
    def __init__(self, min_interval: float = DEFAULT_MIN_INTERVAL, pool_size: int = DEFAULT_POOL_SIZE,
                 max_waiting: int = DEFAULT_MAX_WAITING) -> None:
        self.min_interval = min_interval
        self.pool = asyncio.Semaphore(max(1, pool_size))
        self.pool_size = max(1, pool_size)
        self.max_waiting = max_waiting
        self._waiting = 0
        self._last_start: dict[tuple[str, ...], float] = {}
        self._last: dict[tuple[str, ...], ProbeResult] = {}
        self._inflight: dict[tuple[str, ...], asyncio.Future[ProbeResult]] = {}
        self.live_probes = 0

    async def run(self, target: tuple[str, ...], recorded: ProbeResult | None,
                  probe: Callable[[asyncio.Semaphore], Awaitable[ProbeResult]]) -> Answer:
        """A live result of `probe`, or a recent one inside the spacing. `recorded` is the store's
        latest result for the target (scheduled probes count towards freshness)."""
        now = time.monotonic()
        wall = time.time()
        inflight = self._inflight.get(target)
        if inflight is not None:
            result = await asyncio.shield(inflight)
            return Answer(result, True, max(0.0, time.time() - result.finished_at), self._retry_after(target))
        latest = self._last.get(target)
        if recorded is not None and (latest is None or recorded.finished_at > latest.finished_at):
            latest = recorded
        started = self._last_start.get(target)
        recent = latest is not None and wall - latest.finished_at < self.min_interval
        if latest is not None and (recent or (started is not None and now - started < self.min_interval)):
            return Answer(latest, False, max(0.0, wall - latest.finished_at), self._retry_after(target, latest))
        if self._waiting >= self.max_waiting:
            raise Busy(max(1.0, self.min_interval / 2))
        fut: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
        self._inflight[target] = fut
        self._last_start[target] = now
        self._waiting += 1
        try:
            self.live_probes += 1
            result = await probe(self.pool)
            self._last[target] = result
            fut.set_result(result)
        except asyncio.CancelledError:
            fut.cancel()  # requests sharing this probe see the cancellation too
            raise
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: sharers re-raise it, no "never retrieved" warning
            raise
        finally:
            self._waiting -= 1
            self._inflight.pop(target, None)
        self._prune()
        return Answer(result, True, max(0.0, time.time() - result.finished_at), self._retry_after(target))

    def _retry_after(self, target: tuple[str, ...], latest: ProbeResult | None = None) -> float:
        started = self._last_start.get(target)
        waits = [0.0]
        if started is not None:
            waits.append(self.min_interval - (time.monotonic() - started))
        if latest is not None:
            waits.append(self.min_interval - (time.time() - latest.finished_at))
        return max(waits)

    def _prune(self) -> None:
        """Forget targets not probed for a long time (bounded memory across config changes)."""
        if len(self._last_start) < 4096:
            return
        cutoff = time.monotonic() - self.min_interval
        for key in [k for k, t in self._last_start.items() if t < cutoff and k not in self._inflight]:
            self._last_start.pop(key, None)
            self._last.pop(key, None)
