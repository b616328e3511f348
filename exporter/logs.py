"""Logging setup: logfmt or JSON, every record passed through secret redaction.

Why a filter on the handler rather than care at each call site: library exceptions (MSAL,
requests, ssl) can carry request bodies or headers; redacting the final message is the only
guarantee that no token or secret reaches a log line.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from .redact import redact


class RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        msg = redact(msg)
        if getattr(record, "suppressing", False):
            msg += " (repeating: further similar records suppressed for this interval)"
        suppressed = getattr(record, "suppressed", 0)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        if self.fmt == "json":
            doc: dict[str, object] = {"ts": ts, "level": record.levelname.lower(), "logger": record.name, "msg": msg}
            if suppressed:
                doc["suppressed"] = suppressed
            return json.dumps(doc)
        quoted = msg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        tail = f" suppressed={suppressed}" if suppressed else ""
        return f'ts={ts} level={record.levelname.lower()} logger={record.name} msg="{quoted}"{tail}'


class RateLimit(logging.Filter):
    """At most `burst` records per (logger, message template or `extra={"ratelimit_key": ...}`) per
    `interval` seconds.

    Why: under overload the same line repeats thousands of times a second (19,990 idle web
    connections once produced 165,887 lines, 79 MB) and buries the one line that explains
    it. The record that hits the limit says so; the first record of the next interval carries
    `suppressed=K` (logfmt field / JSON key) for the ones dropped. Keys are bounded.
    """

    MAX_KEYS = 2048

    def __init__(self, burst: int = 10, interval: float = 60.0) -> None:
        super().__init__()
        self.burst, self.interval = burst, interval
        self._windows: dict[tuple[str, str], list[float]] = {}  # key -> [window start, count, suppressed]
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:  # debug output (access log) was asked for explicitly
            return True
        # a record about one subject (a state change of one key) is limited per subject, not per template:
        # a credential outage's many distinct "failing" lines must not hide an endpoint's
        key = (record.name, str(getattr(record, "ratelimit_key", None) or record.msg))
        now = time.monotonic()
        w = self._windows.get(key)
        if w is None or now - w[0] >= self.interval:
            if len(self._windows) >= self.MAX_KEYS:
                self._windows.clear()
            if w is not None and w[2]:
                record.suppressed = int(w[2])
            self._windows[key] = [now, 1, 0]
            return True
        w[1] += 1
        if w[1] <= self.burst:
            if w[1] == self.burst:
                record.suppressing = True
            return True
        w[2] += 1
        self.suppressed_total += 1
        return False


class _DropKnownNoise(logging.Filter):
    """asyncio warns on every STARTTLS-upgraded stream close (a CPython quirk, harmless)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "asyncio" and "eof_received() has no effect" in str(record.msg))


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(fmt))
    handler.addFilter(_DropKnownNoise())
    handler.addFilter(RateLimit())
    # also on the logger itself: records emitted while the loop shuts down can reach
    # logging's last-resort handler, which has no filters
    logging.getLogger("asyncio").addFilter(_DropKnownNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = "warning" if level == "warn" else level
    root.setLevel(level.upper())
    # MSAL and urllib3 debug logs include request details; keep them at WARNING unless asked
    for noisy in ("msal", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "debug" else logging.INFO)
