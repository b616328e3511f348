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
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        if self.fmt == "json":
            return json.dumps({"ts": ts, "level": record.levelname.lower(), "logger": record.name, "msg": msg})
        quoted = msg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'ts={ts} level={record.levelname.lower()} logger={record.name} msg="{quoted}"'


class _DropKnownNoise(logging.Filter):
    """asyncio warns on every STARTTLS-upgraded stream close (a CPython quirk, harmless)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "asyncio" and "eof_received() has no effect" in str(record.msg))


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(fmt))
    handler.addFilter(_DropKnownNoise())
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
