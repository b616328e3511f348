"""FETCH and STORE for the simulated IMAP server: just enough to serve the oldest message's
INTERNALDATE and to make any flag change visible.

Why flag semantics at all: the exporter promises never to change \\Seen. A simulator that
ignored flags could not catch a probe that fetched a body on a read-write (SELECTed) mailbox,
so BODY[] / RFC822 set \\Seen unless the mailbox was opened with EXAMINE (RFC 3501 6.4.5), and
STORE is refused on a read-only mailbox, as real servers do.
"""

from __future__ import annotations

import re

from .messages import arrival, body, headers, internaldate
from .state import SimMailbox

MAX_FETCH = 100  # messages answered per FETCH (the probe asks for one)
SIZE = 2048
_ITEM = re.compile(r"BODY\.PEEK\[[^\]]*\]|BODY\[[^\]]*\]|[A-Z0-9.]+", re.I)


def _sequence(spec: str, count: int) -> list[int] | None:
    """Message numbers of an IMAP sequence set (`1`, `2:4`, `1:*`, `*`), None if malformed."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        try:
            a = count if lo == "*" else int(lo)
            b = a if not hi else (count if hi == "*" else int(hi))
        except ValueError:
            return None
        a, b = min(a, b), max(a, b)
        out.extend(n for n in range(max(a, 1), min(b, count) + 1) if n not in out)
    return out[:MAX_FETCH]


def _flags(mailbox: SimMailbox, n: int) -> str:
    return "(" + " ".join(f for f, on in (("\\Seen", n in mailbox.seen), ("\\Deleted", n in mailbox.deleted))
                          if on) + ")"


def message_command(tag: str, command: str, args: str, mailbox: SimMailbox, read_only: bool) -> list[str]:
    """The reply lines to FETCH or STORE on the open INBOX."""
    count = max(0, int(mailbox.messages))
    spec, _, rest = args.partition(" ")
    numbers = _sequence(spec, count)
    if numbers is None or not rest:
        return [f"{tag} BAD Command Argument Error. 11"]
    if command == "STORE":
        if read_only:
            return [f"{tag} NO [READ-ONLY] The mailbox is opened read-only."]
        op, _, flags = rest.partition(" ")
        upper = flags.upper()
        target = mailbox.seen if "\\SEEN" in upper else mailbox.deleted if "\\DELETED" in upper else None
        if target is None or op.upper().lstrip("+-").split(".")[0] != "FLAGS":
            return [f"{tag} BAD Command Argument Error. 11"]
        for n in numbers:
            (target.discard if op.startswith("-") else target.add)(n)
        return [*(f"* {n} FETCH (FLAGS {_flags(mailbox, n)})" for n in numbers), f"{tag} OK STORE completed."]
    items = [i.upper() for i in _ITEM.findall(rest.strip("() "))]
    lines: list[str] = []
    for n in numbers:
        parts: list[str] = []
        for item in items:
            if item == "INTERNALDATE":
                parts.append(f'INTERNALDATE "{internaldate(arrival(mailbox, n))}"')
            elif item == "UID":
                parts.append(f"UID {n}")
            elif item == "RFC822.SIZE":
                parts.append(f"RFC822.SIZE {SIZE}")
            elif item == "FLAGS":
                continue  # added last, after a body fetch may have set \Seen
            elif item.startswith(("BODY[", "RFC822", "BODY.PEEK[")):
                text = headers(mailbox, n) + [""] if "HEADER" in item else body(mailbox, n)
                data = "\r\n".join(text)
                if not item.startswith("BODY.PEEK[") and not read_only:
                    mailbox.seen.add(n)
                name = item.replace("BODY.PEEK[", "BODY[")
                parts.append(f"{name} {{{len(data.encode())}}}\r\n{data}")
            else:
                return [f"{tag} BAD Command Argument Error. 11"]
        if "FLAGS" in items or any(i.startswith(("BODY[", "RFC822")) and not read_only for i in items):
            parts.append(f"FLAGS {_flags(mailbox, n)}")
        lines.append(f"* {n} FETCH (" + " ".join(parts) + ")")
    return [*lines, f"{tag} OK FETCH completed."]
