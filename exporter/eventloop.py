"""Event loop and garbage-collector tuning for `serve`.

Why: a probe is mostly TLS and transport work on the event loop; uvloop's transports cost less
CPU per probe than asyncio's (bench/bench_probes.py). It is used on Linux/macOS when installed
(a dependency there, `sys_platform != "win32"`), the standard loop elsewhere or when
M365_EXPORTER_EVENT_LOOP=asyncio. After start-up, the long-lived objects (config, providers,
the store's keys, the rendered fragments' containers) are moved out of the collector's view
with `gc.freeze()`, so full collections stop walking them: they were event-loop stalls of
hundreds of milliseconds at 10,000 mailboxes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
# Young collections every 50,000 net tracked allocations: a young collection walks what is
# alive *now* (the in-flight probes' objects), not what was allocated, so rarer ones cost about
# the same each and promote fewer in-flight objects to gen 1; at 10,000 mailboxes the gen-1
# collections' p99 fell from 26 to 2.3 ms with this (10,000: p99 0.25 vs 10 ms for gen 0).
# A full (gen-2) collection walks the whole unfrozen heap, so it runs only after 20 x 50 young
# ones (tens of minutes): probes' transient cycles die young; what survives start-up is frozen.
GC_THRESHOLDS = (50_000, 20, 50)
FREEZE_WAIT = 120.0  # freeze at readiness, or after this many seconds at the latest


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    from . import oscompat

    if os.environ.get("M365_EXPORTER_EVENT_LOOP", "").lower() == "asyncio" or oscompat.is_windows():
        return None  # Windows (real or simulated by the tests): the standard loop, as uvloop has none
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with uvloop where available."""
    factory = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        if factory is not None:
            log.debug("event loop: uvloop")
        return runner.run(main)


async def freeze_after_startup(ready: Callable[[], bool]) -> None:
    """Once ready (or after FREEZE_WAIT), freeze what exists after start-up.

    No gc.collect() first: at 10,000 mailboxes that full collection alone stalled the event loop
    for ~600 ms; the start-up garbage it would have freed is a one-time, bounded cost."""
    gc.set_threshold(*GC_THRESHOLDS)
    for _ in range(int(FREEZE_WAIT / 0.5)):  # bounded: freeze anyway after FREEZE_WAIT
        if ready():
            break
        await asyncio.sleep(0.5)
    gc.freeze()
    log.debug("gc: froze %d objects after start-up", gc.get_freeze_count())
