"""The simulated INBOX's messages: arrival times, headers and flags, and the command log.

Why: the exporter reads the oldest message's age (IMAP `FETCH 1 (INTERNALDATE)`, POP3
`TOP 1 0`) to see a consumer that stopped. The simulator must answer those like Exchange does,
let tests and the demo seed how old the oldest message is, and keep enough state (\\Seen,
deletions) and a log of the commands clients sent for tests to prove the probe changes nothing.

A mailbox holds `messages` messages; message 1 (the oldest) arrived at `oldest_received`
(default: FRESH_AGE seconds ago), the others evenly between then and now.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import format_datetime

from .state import SimMailbox, SimState

FRESH_AGE = 120.0  # seconds: an unseeded mailbox's oldest message is this old (a healthy consumer)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
AUTH_VERBS = ("AUTHENTICATE", "AUTH")


def arrival(mailbox: SimMailbox, number: int, now: float | None = None) -> float:
    """Unix arrival time of message `number` (1-based) of the mailbox."""
    now = time.time() if now is None else now
    count = max(1, int(mailbox.messages))
    oldest = mailbox.oldest_received if mailbox.oldest_received is not None else now - FRESH_AGE
    oldest = min(oldest, now)
    if count == 1:
        return oldest
    return oldest + (now - oldest) * (number - 1) / (count - 1)


def internaldate(ts: float) -> str:
    """RFC 3501 date-time as Exchange sends it, in UTC: `02-Dec-2026 05:27:24 +0000`."""
    d = datetime.fromtimestamp(ts, UTC)
    return f"{d.day:02d}-{_MONTHS[d.month - 1]}-{d.year:04d} {d:%H:%M:%S} +0000"


def headers(mailbox: SimMailbox, number: int) -> list[str]:
    """The header lines of a message (what TOP n 0 returns before the blank line)."""
    when = datetime.fromtimestamp(arrival(mailbox, number), UTC)
    return [
        f"Received: from SIM0PR01MB0002.namprd01.prod.outlook.com; {format_datetime(when)}",
        f"From: customer{number}@example.net",
        f"To: {mailbox.address}",
        f"Subject: Simulated customer message {number}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <{number}.{int(when.timestamp())}@sim.example>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]


def body(mailbox: SimMailbox, number: int) -> list[str]:
    return [*headers(mailbox, number), "", f"Hello, this is simulated message {number}.", ""]


def record_command(state: SimState, protocol: str, line: str) -> None:
    """Remember a client command, with anything after `AUTHENTICATE <mech>` / `AUTH <mech>` cut off
    (the SASL response carries a token)."""
    words = line.strip().split()
    for i, word in enumerate(words[:2]):
        if word.upper() in AUTH_VERBS:
            words = words[:i + 2]
            break
    with state.lock:
        state.commands.append((protocol, " ".join(words)))
