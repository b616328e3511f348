"""State-change log: one line when a check starts failing, changes reason, or recovers.

Why: an operator grepping the journal at 3 a.m. needs "when did sales@ IMAP start failing, why,
and what do I do", not one line per probe (blackbox_exporter's per-probe logs drown a busy
exporter) and not silence (before this, no failure or recovery was ever logged). So each key
(mailbox check, credential, endpoint) logs only on a change of state:

    warning  mailbox check failing: mailbox=sales@contoso.example check=imap reason=secret_expired ...
    warning  credential failing: credential=ece-app reason=secret_expired fix="Create a new client ..."
    warning  mailbox check failing, reason changed: ... reason=timeout (was auth_failed) ...
    info     mailbox check recovered: mailbox=sales@contoso.example check=imap (was secret_expired for 4m10s)

A key's first result logs only if it fails (a healthy start is not news). Details are short and
pass through `redact` (and the redacting log formatter, like every record): never a secret.
The per-mailbox mirror of a credential's token probe (check=token) is not logged separately:
the credential's own line says it once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .probes.result import ProbeResult
from .reasons import Reason
from .redact import redact

log = logging.getLogger("m365.transitions")

Key = tuple[str, ...]
FIX_WORDS = 12  # the fix's first words: enough to recognise it, the rest is in docs/reasons.md and `check`
DETAIL_CHARS = 160


@dataclass
class _State:
    success: bool
    reason: Reason | None
    since: float


def fix_words(text: str, n: int = FIX_WORDS) -> str:
    words = text.split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "")


def _subject(key: Key) -> tuple[str, str, str | None, str | None] | None:
    """(what, labels, mailbox, credential) for a key that is logged; None for keys that are not."""
    kind = key[0]
    if kind == "mailbox" and len(key) == 3 and key[2] != "token":
        return "mailbox check", f"mailbox={key[1]} check={key[2]}", key[1], None
    if kind == "credential" and len(key) == 2:
        return "credential", f"credential={key[1]}", None, key[1]
    if kind == "endpoint" and len(key) == 3:
        return "endpoint", f"endpoint={key[1]}:{key[2]}", None, None
    return None


def _duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class TransitionLog:
    """Remembers each key's last state and logs when it changes. Thread-safe, O(1) per result."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._lock = threading.Lock()
        self._states: dict[Key, _State] = {}

    def observe(self, key: Key, result: ProbeResult, credential: str | None = None,
                fixer: Callable[[Reason], str] | None = None) -> None:
        """Record a key's new result; log if its state changed. `credential`: the mailbox's, for the fix;
        `fixer` fills the fix for this key (exporter/fixes.py), called only when a failure is logged."""
        subject = _subject(key)
        if subject is None:
            return
        now = time.time()
        with self._lock:
            prev = self._states.get(key)
            if prev is not None and prev.success == result.success and prev.reason is result.reason:
                return
            still_failing = prev is not None and not prev.success and not result.success
            self._states[key] = _State(result.success, result.reason, prev.since if still_failing and prev else now)
        what, labels, mailbox, cred = subject
        if result.success:
            if prev is not None and not prev.success:
                self._log.info("%s recovered: %s (was %s for %s)", what, labels,
                               prev.reason.value if prev.reason else "failing", _duration(now - prev.since),
                               extra={"ratelimit_key": "/".join(key)})
            return
        reason = result.reason or Reason.UNKNOWN
        changed = ""
        if prev is not None and not prev.success:
            changed = f", reason changed (was {prev.reason.value if prev.reason else 'unknown'})"
        filled = fixer(reason) if fixer is not None else reason.fix_for(mailbox=mailbox, credential=cred or credential)
        fix = fix_words(filled)
        detail = redact(" ".join(result.detail.split()))[:DETAIL_CHARS]
        self._log.warning('%s failing%s: %s reason=%s fix="%s" detail="%s"', what, changed, labels,
                          reason.value, fix, detail, extra={"ratelimit_key": "/".join(key)})

    def retain(self, keys: Iterable[Key]) -> None:
        """Forget keys no longer configured (after a reload): a removed check never logs a recovery."""
        keep = set(keys)
        with self._lock:
            for key in [k for k in self._states if k not in keep]:
                del self._states[key]
