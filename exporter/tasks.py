"""Stopping asyncio tasks without swallowing the caller's own cancellation.

Why: the usual `task.cancel(); with suppress(CancelledError): await task` also swallows a
cancellation aimed at the *caller* while it waits, so the caller carries on as if nothing
happened (the bug class behind issue 9's zombie probe tasks). `asyncio.wait` never raises
the awaited task's outcome and lets the caller's cancellation through, and it is bounded.
`tests/test_cancellation_rule.py` forbids the suppress form in exporter/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout: float = 5.0) -> set[asyncio.Task[Any]]:
    """Cancel `tasks` and wait up to `timeout` seconds for them to end; the ones still running."""
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if not pending:
        return set()
    _, still = await asyncio.wait(pending, timeout=timeout)
    for t in pending:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: a task that failed while stopping is not "never retrieved"
    return still
