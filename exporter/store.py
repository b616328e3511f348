"""ResultStore: the latest result and running counters for every probe key.

Why a store between probes and /metrics: scrapes must never trigger probes (Microsoft would
see a login per scrape per Prometheus replica), and counters must survive between probes.
Keys are tuples: ("mailbox", mailbox, check), ("credential", name), ("endpoint", host, port).

Why change tracking: `/metrics` re-renders only what changed (collector.py). Every change
stamps the key with a new `version` and adds it to a dirty set that the renderer swaps out
in O(1) (`take_dirty`); a change of the *set* of keys (reload) bumps `layout`. The lock is
only ever held for a few dictionary operations, never across a render or a copy of every
key's state, so `record()` on the event loop never waits for the renderer.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .probes.result import ProbeResult

Key = tuple[str, ...]
NO_FAILURES: Mapping[str, int] = MappingProxyType({})


@dataclass(slots=True)  # one per key (30,000 at 10,000 mailboxes): no per-instance __dict__
class KeyState:
    interval: float
    timeout: float
    last: ProbeResult | None = None
    total: int = 0
    # failures by reason, created on the first failure: most keys never fail, and an empty
    # Counter per key was ~2.4 MiB at 10,000 mailboxes
    counts: Counter[str] | None = None
    last_success_at: float | None = None
    created_at: float = field(default_factory=time.time)
    version: int = 0

    @property
    def failures(self) -> Mapping[str, int]:
        """Failed probes by reason value (read-only; `ResultStore.record` counts them)."""
        return self.counts if self.counts is not None else NO_FAILURES

    def overdue(self, now: float) -> bool:
        """No probe finished within two intervals plus the timeout (scheduler stuck or saturated)."""
        return now > self.overdue_at()

    def overdue_at(self) -> float:
        """The wall-clock time after which this key counts as overdue (unless a probe finishes)."""
        since = self.last.finished_at if self.last else self.created_at
        return since + 2 * self.interval + self.timeout

    def copy(self) -> KeyState:
        return KeyState(self.interval, self.timeout, self.last, self.total,
                        None if self.counts is None else Counter(self.counts),
                        self.last_success_at, self.created_at, self.version)


class ResultStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[Key, KeyState] = {}
        self.version = 0  # any change
        self.layout = 0  # the set or order of keys, or config-derived data, changed
        self._dirty: set[Key] = set()
        self._pending = 0  # keys without a result yet (readiness)
        self.facts: dict[str, float] = {}  # exporter-level gauges (reload status, queue wait ...)

    def _touch(self, key: Key, st: KeyState) -> None:
        self.version += 1
        st.version = self.version
        self._dirty.add(key)

    def ensure(self, key: Key, interval: float, timeout: float) -> None:
        """Declare a key (from config) so it is exported as pending/overdue before its first probe."""
        with self._lock:
            st = self._states.get(key)
            if st is None:
                st = self._states[key] = KeyState(interval, timeout)
                self._pending += 1
                self.layout += 1
            elif (st.interval, st.timeout) != (interval, timeout):
                st.interval, st.timeout = interval, timeout
            else:
                return
            self._touch(key, st)

    def record(self, key: Key, result: ProbeResult) -> None:
        with self._lock:
            st = self._states.get(key)
            if st is None:  # removed by a reload while the probe ran: drop the result
                return
            if st.last is None:
                self._pending -= 1
            st.last = result
            st.total += 1
            if result.success:
                st.last_success_at = result.finished_at
            elif result.reason is not None:
                if st.counts is None:
                    st.counts = Counter()
                st.counts[result.reason.value] += 1
            self._touch(key, st)

    def prune(self, keep: set[Key]) -> None:
        """Forget keys no longer configured (after a reload), so their series disappear."""
        with self._lock:
            gone = [k for k in self._states if k not in keep]
            for key in gone:
                if self._states.pop(key).last is None:
                    self._pending -= 1
            self.version += 1
            self.layout += 1  # also: config-derived families (mailbox_info, credential_info) may have changed

    def set_fact(self, name: str, value: float) -> None:
        with self._lock:
            self.facts[name] = value
            self.version += 1

    def bump(self) -> None:
        """Invalidate cached /metrics bodies (something outside the store changed)."""
        with self._lock:
            self.version += 1

    def take_dirty(self) -> set[Key]:
        """Keys changed since the last call (swapped out, O(1))."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            return dirty

    @property
    def changed(self) -> bool:
        """Some key changed since the last take_dirty (a racy read is fine: it only schedules one)."""
        return bool(self._dirty)

    def keys(self) -> list[Key]:
        """All keys in insertion order (the renderer asks only when `layout` changed)."""
        with self._lock:
            return list(self._states)

    def view(self, key: Key) -> KeyState | None:
        """A consistent copy of one key's state, safe to read from another thread."""
        with self._lock:
            st = self._states.get(key)
            return None if st is None else st.copy()

    def snapshot(self) -> dict[Key, KeyState]:
        """A copy of every key's state (landing page, tests); the renderer never uses it."""
        return {k: st for k in self.keys() if (st := self.view(k)) is not None}

    def get(self, key: Key) -> KeyState | None:
        with self._lock:
            return self._states.get(key)

    def first_round_complete(self) -> bool:
        return self._pending == 0
