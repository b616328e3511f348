"""State-change log lines are rate-limited per subject, not per message template.

Why: a credential outage logs one "failing" line per affected mailbox check with the same
template; the log rate limit (exporter/logs.py) must not then swallow the one line about an
endpoint that fails at the same time (seen in the alerting end-to-end test)."""

from __future__ import annotations

import logging

from exporter.logs import RateLimit
from exporter.probes.result import ProbeResult
from exporter.reasons import Reason
from exporter.transitions import TransitionLog


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_many_failing_subjects_each_log_once_through_the_rate_limit() -> None:
    logger = logging.getLogger("m365.transitions.test")
    logger.propagate = False
    handler = _Collect()
    handler.addFilter(RateLimit(burst=10, interval=60.0))
    logger.addHandler(handler)
    try:
        log = TransitionLog(logger)
        for i in range(30):
            log.observe(("mailbox", f"m{i}@contoso.example", "imap"), ProbeResult.fail(Reason.SECRET_EXPIRED, 0.1))
        log.observe(("endpoint", "outlook.office365.com", "993"), ProbeResult.fail(Reason.TIMEOUT, 2.0))
    finally:
        logger.removeHandler(handler)
    failing = [ln for ln in handler.lines if " failing: " in ln]
    assert len(failing) == 31, handler.lines
    assert any("outlook.office365.com:993" in ln for ln in failing)


def test_one_subject_flapping_is_still_limited() -> None:
    limit = RateLimit(burst=3, interval=60.0)
    rec = lambda: logging.LogRecord("m365.transitions", logging.WARNING, __file__, 1, "x %s", ("a",), None)  # noqa: E731
    passed = 0
    for _ in range(10):
        r = rec()
        r.ratelimit_key = "mailbox/a/imap"
        passed += limit.filter(r)
    assert passed == 3
