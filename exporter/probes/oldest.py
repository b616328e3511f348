"""The oldest message in INBOX: the consumer's health, seen without the consumer's credentials.

Why: the exporter proves *its own* credentials work; it cannot see the contact-centre
application's token. When that application stops reading (its refresh token lapsed after 90
days of inactivity, its retriever service died, its mailbox config changed), mail piles up. A
count-based backlog alert misses a low-volume mailbox that gets three mails a day, but the age of
the oldest waiting message grows the same way for every mailbox. So the IMAP and POP3 probes ask,
in the session they already have open and without side effects:

* IMAP: `FETCH 1 (INTERNALDATE)` after `EXAMINE INBOX` (read-only; INTERNALDATE sets no flag;
  message 1 is the oldest by arrival);
* POP3: `TOP 1 0` (headers only; nothing is marked or deleted unless DELE, which we never send)
  and the message's `Date:` header (the sender's clock: POP3 has no arrival time).

This is extra information: failing to get it (no such command, an odd reply, a slow server)
never fails the login check; it is noted in the transcript and the fact is simply absent. The
step has its own short time budget so it cannot eat the probe's timeout.

This module holds what both protocols share: the fact name, the time budget, the parsers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from ..facts import OLDEST_MESSAGE
from .lineio import ProbeFailure
from .mailconn import MailConnection

# The result's fact is facts.OLDEST_MESSAGE (float unix time); the collector exports it as
# m365_mailbox_oldest_message_timestamp_seconds{mailbox}.
OLDEST_TIMEOUT = 3.0  # seconds the extra step may take, at most

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
# RFC 3501 date-time: "dd-Mon-yyyy hh:mm:ss +zzzz", day may be space-padded.
_INTERNALDATE = re.compile(
    r'INTERNALDATE "\s?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})"', re.I)


def parse_internaldate(text: str) -> float | None:
    """Unix time of the INTERNALDATE in a FETCH response line, None if there is none or it is invalid.
    Locale-independent (strptime's %b is not)."""
    m = _INTERNALDATE.search(text)
    if m is None:
        return None
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None
    offset = timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == "-" else 1)
    try:
        when = datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=timezone(offset))
    except ValueError:
        return None
    return when.timestamp()


def parse_date_header(headers: list[str]) -> float | None:
    """Unix time of the first `Date:` header in unfolded header lines, None if absent or unparseable.
    A Date without a zone is taken as UTC (RFC 5322 says -0000 means "unknown zone")."""
    for line in headers:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "date":
            try:
                when = parsedate_to_datetime(value.strip())
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return when.timestamp()
    return None


def unfold(lines: list[str]) -> list[str]:
    """RFC 5322 unfolding: a line starting with white space continues the previous header."""
    out: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and out:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


async def best_effort(conn: MailConnection, what: str,
                      step: Callable[[], Awaitable[float | None]]) -> dict[str, float | str]:
    """Run one protocol's oldest-message step within OLDEST_TIMEOUT; its failure is a transcript note.

    Only our own short deadline and probe failures (bad reply, closed connection) are caught: the
    probe's overall deadline and cancellation still propagate as they must.
    """
    conn.step = "oldest message"
    try:
        async with asyncio.timeout(OLDEST_TIMEOUT) as cm:
            when = await step()
    except TimeoutError:
        if not cm.expired():
            raise
        conn.healthy = False  # a reply may still be in flight: no polite goodbye on this connection
        conn.transcript.note(f"oldest message: no answer to {what} within {OLDEST_TIMEOUT:g}s (login check unaffected)")
        return {}
    except ProbeFailure as exc:
        conn.transcript.note(f"oldest message: {what} failed: {exc.detail} (login check unaffected)")
        return {}
    if when is None:
        return {}
    conn.transcript.note(f"oldest message arrived {datetime.fromtimestamp(when, UTC):%Y-%m-%d %H:%M:%S} UTC")
    return {OLDEST_MESSAGE: when}
