"""ResultStore: the latest result and running counters for every probe key.

Why a store between probes and /metrics: scrapes must never trigger probes (Microsoft would
see a login per scrape per Prometheus replica), and counters must survive between probes.
Keys are tuples: ("mailbox", mailbox, check), ("credential", name), ("endpoint", host, port).
`version` increases on every change so the collector can cache rendered bytes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from .probes.result import ProbeResult

Key = tuple[str, ...]


@dataclass
class KeyState:
    interval: float
    timeout: float
    last: ProbeResult | None = None
    total: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    last_success_at: float | None = None
    created_at: float = field(default_factory=time.time)

    def overdue(self, now: float) -> bool:
        """No probe finished within two intervals plus the timeout (scheduler stuck or saturated)."""
        since = self.last.finished_at if self.last else self.created_at
        return now - since > 2 * self.interval + self.timeout


class ResultStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[Key, KeyState] = {}
        self.version = 0
        self.facts: dict[str, float] = {}  # exporter-level gauges (reload status, queue wait ...)

    def ensure(self, key: Key, interval: float, timeout: float) -> None:
        """Declare a key (from config) so it is exported as pending/overdue before its first probe."""
        with self._lock:
            st = self._states.get(key)
            if st is None:
                self._states[key] = KeyState(interval, timeout)
            else:
                st.interval, st.timeout = interval, timeout
            self.version += 1

    def record(self, key: Key, result: ProbeResult) -> None:
        with self._lock:
            st = self._states.get(key)
            if st is None:  # removed by a reload while the probe ran: drop the result
                return
            st.last = result
            st.total += 1
            if result.success:
                st.last_success_at = result.finished_at
            elif result.reason is not None:
                st.failures[result.reason.value] += 1
            self.version += 1

    def prune(self, keep: set[Key]) -> None:
        """Forget keys no longer configured (after a reload), so their series disappear."""
        with self._lock:
            for key in [k for k in self._states if k not in keep]:
                del self._states[key]
            self.version += 1

    def set_fact(self, name: str, value: float) -> None:
        with self._lock:
            self.facts[name] = value
            self.version += 1

    def snapshot(self) -> dict[Key, KeyState]:
        """A shallow copy safe to iterate from another thread (results are never mutated)."""
        with self._lock:
            return {
                k: KeyState(v.interval, v.timeout, v.last, v.total, Counter(v.failures), v.last_success_at,
                            v.created_at)
                for k, v in self._states.items()
            }

    def get(self, key: Key) -> KeyState | None:
        with self._lock:
            return self._states.get(key)

    def first_round_complete(self) -> bool:
        with self._lock:
            return all(st.last is not None for st in self._states.values())
