"""Scrape cadences: when the regular scrapers of one /metrics body variant will ask next.

Why: keep_warm builds a body just before a scrape is due (MetricsRenderer._prebuild), so the
scrape is a cache hit. One Prometheus scrapes a target at a fixed offset within its interval,
but an HA pair of Prometheus servers (docs/scaling.md) or several clients ask for the same
variant at different offsets: "last request + the gap before it" would alternate between their
gaps and predict neither. A scraper is recognised instead by a chain of three requests at equal
gaps (within a tolerance) in the recent history: requests at t - 2g, t - g and t, with none yet
near t + g, predict one at t + g. Two scrapers 4 s apart at 15 s are two chains; a burst of
requests or a one-off is no chain and predicts nothing. The history is short (HISTORY requests),
so the work per call is bounded (HISTORY^3 comparisons at most) and a stopped scraper's chain
drops out within an interval.
"""

from __future__ import annotations

from collections import deque

HISTORY = 12  # recent request times kept per variant
TOLERANCE = 0.1  # a request within this share of the gap (at least MIN_SLACK) counts as on time
MIN_SLACK = 0.25  # seconds
BUILT = 16  # predicted requests remembered as already built for


class Cadences:
    """Recent requests of one body variant; times are `time.monotonic()` seconds."""

    def __init__(self, shortest: float, longest: float) -> None:
        self.shortest, self.longest = shortest, longest  # gaps outside these are not a cadence
        self._times: deque[float] = deque(maxlen=HISTORY)
        self._built: deque[float] = deque(maxlen=BUILT)

    def note(self, now: float) -> None:
        """A request arrived now."""
        self._times.append(now)

    def predictions(self, now: float) -> list[float]:
        """When the scrapers seen so far will ask next (not before `now` minus a slack)."""
        times = list(self._times)
        out: list[float] = []
        for i, r in enumerate(times):
            for q in reversed(times[:i]):  # the shortest gap first: one chain per request, not its multiples
                gap = r - q
                if gap < self.shortest:
                    continue
                if gap > self.longest:
                    break
                slack = max(MIN_SLACK, TOLERANCE * gap)
                if not any(abs(q - gap - p) <= slack for p in times):
                    continue  # two requests are no cadence yet
                nxt = r + gap
                if nxt >= now - slack and not any(abs(s - nxt) <= slack for s in times[i + 1:]):
                    if all(abs(nxt - o) > slack for o in out):  # not asked yet, not a missed turn
                        out.append(nxt)
                break
        return out

    def take_due(self, now: float, lead: float) -> float | None:
        """The latest predicted request due within `lead` seconds that no body was built for yet
        (remembered as built), or None."""
        latest: float | None = None
        for due in self.predictions(now):
            if due - now <= lead and all(abs(due - b) > MIN_SLACK for b in self._built):
                self._built.append(due)
                latest = due if latest is None else max(latest, due)
        return latest
