"""IMAP probe: greeting, CAPABILITY, AUTHENTICATE XOAUTH2, EXAMINE INBOX, LOGOUT.

Why EXAMINE after AUTHENTICATE: Exchange Online accepts a token it cannot serve (wrong
account, no FullAccess on the mailbox in `user=`) and only the next command fails with
`BAD User is authenticated but not connected.` followed by `* BYE`. So success means
AUTHENTICATE OK *and* EXAMINE INBOX OK. EXAMINE (not SELECT) opens the mailbox read-only: a
probe must never change \\Recent or \\Seen state. The message count (`* N EXISTS`) becomes the
`messages` fact (a growing backlog means the mailbox's consumer stopped), and when there is a
message, `FETCH 1 (INTERNALDATE)` gives the oldest one's arrival time (probes/oldest.py).

XOAUTH2 is sent as an initial response when SASL-IR is advertised (Exchange does), otherwise
after the `+` continuation. A `+ <base64 JSON>` continuation *after* our response is the
server's error challenge: we answer with an empty line and expect the tagged NO.

Dialogue and bounds come from mailconn/lineio (see their docstrings for why the client is
hand-written rather than aioimaplib). The reply classification is the IMAP_RULES table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..config import Endpoint
from ..facts import MESSAGES
from ..reasons import Reason
from .mailconn import MailConnection, ProbeFailure, classify_reply, rule, run_probe
from .oldest import best_effort, parse_internaldate
from .result import ProbeResult
from .sasl import describe_challenge, initial_response, sasl_secrets

MAX_RESPONSE_LINES = 500  # untagged lines accepted before a tagged reply (Exchange sends < 10)
MAX_LITERAL = 64 * 1024
SASL_PLACEHOLDER = "[REDACTED SASL RESPONSE]"

# Reply classification, first match wins; anything unmatched is PROTOCOL_ERROR.
# status: tagged NO/BAD, untagged BYE, or "+" (an unexpected continuation).
# RFC 5530 response codes decide before status/step rules: they are the server telling us why.
def _code(*names: str) -> str:
    """The reply carries one of these RFC 5530 response codes right after its status."""
    return r"^\S+\s+(?:OK|NO|BAD|BYE)\s+\[(?:" + "|".join(names) + r")[\] ]"


IMAP_RULES = (
    # Exchange Online's false success: AUTHENTICATE OK, then the next command says this.
    rule(Reason.MAILBOX_NOT_ACCESSIBLE, None, r"authenticated but not connected"),
    rule(Reason.SERVER_TEMPORARY_FAILURE, None, _code("UNAVAILABLE")),  # a subsystem is down, retry
    rule(Reason.AUTH_FAILED, None, _code("AUTHENTICATIONFAILED", "EXPIRED")),
    rule(Reason.MAILBOX_NOT_ACCESSIBLE, None, _code("AUTHORIZATIONFAILED")),  # not allowed as user=
    rule(Reason.MAILBOX_IN_USE, None, _code("INUSE", "LIMIT")),
    rule(Reason.SERVER_UNAVAILABLE, "BYE"),
    rule(Reason.AUTH_FAILED, "NO", steps={"authenticate"}),  # Exchange: "NO AUTHENTICATE failed."
    rule(Reason.PROTOCOL_ERROR, "BAD", steps={"authenticate"}),
    rule(Reason.MAILBOX_NOT_ACCESSIBLE, "NO", steps={"examine"}),
)

_EXISTS = re.compile(r"^\* (\d{1,10}) EXISTS\b", re.I)
_LITERAL = re.compile(r"\{(\d{1,10})\+?\}$")


@dataclass
class ImapReply:
    """A command's outcome: status OK/NO/BAD, "+" (continuation) or BYE, with untagged lines."""

    status: str
    text: str  # the tagged (or continuation / BYE) line
    untagged: list[str] = field(default_factory=list)


async def _read_reply(conn: MailConnection, tag: str) -> ImapReply:
    untagged: list[str] = []
    bye: str | None = None
    after_literal = False  # the line continues an untagged response after a {n} literal
    for _ in range(MAX_RESPONSE_LINES):
        try:
            line = await conn.readline()
        except ProbeFailure:
            if bye is not None:  # the server said goodbye, then closed: that is the news
                return ImapReply("BYE", bye, untagged)
            raise
        if after_literal or line.startswith("* "):
            if not after_literal and line[2:5].upper() == "BYE":
                bye = line
            untagged.append(line)
            m = _LITERAL.search(line)
            after_literal = m is not None
            if m:
                size = int(m.group(1))
                if size > MAX_LITERAL:
                    raise ProbeFailure(Reason.PROTOCOL_ERROR, f"server sent a {size}-byte literal")
                await conn.readexactly(size)
            continue
        if line.startswith(tag + " "):
            parts = line[len(tag) + 1:].split(" ", 1)
            status = parts[0].upper()
            if status not in ("OK", "NO", "BAD"):
                raise ProbeFailure(Reason.PROTOCOL_ERROR, f"malformed tagged reply: {line[:120]}")
            return ImapReply(status, line, untagged)
        if line.startswith("+"):
            return ImapReply("+", line[1:].strip(), untagged)
        raise ProbeFailure(Reason.PROTOCOL_ERROR, f"unexpected line: {line[:120]}")
    raise ProbeFailure(Reason.PROTOCOL_ERROR, f"more than {MAX_RESPONSE_LINES} lines without a tagged reply")


async def _command(conn: MailConnection, tag: str, command: str, *, shown: str | None = None) -> ImapReply:
    await conn.send(f"{tag} {command}", shown=None if shown is None else f"{tag} {shown}")
    return await _read_reply(conn, tag)


def _failure(conn: MailConnection, reply: ImapReply) -> ProbeFailure:
    reason = classify_reply(IMAP_RULES, conn.step, reply.status, reply.text)
    return conn.fail(reason, reply.text)


def _capabilities(untagged: list[str]) -> set[str]:
    caps: set[str] = set()
    for line in untagged:
        words = line.split()
        if len(words) >= 2 and words[1].upper() == "CAPABILITY":
            caps.update(w.upper() for w in words[2:])
    return caps


async def _session(conn: MailConnection, user: str, token: str) -> dict[str, float | str]:
    conn.step = "greeting"
    greeting = await conn.readline()
    kind = greeting[2:].split(" ", 1)[0].upper() if greeting.startswith("* ") else ""
    if kind == "BYE":
        raise conn.fail(classify_reply(IMAP_RULES, conn.step, "BYE", greeting), greeting)
    if kind != "OK":
        raise conn.fail(Reason.PROTOCOL_ERROR, f"unexpected greeting: {greeting[:120]}")
    conn.healthy = True

    conn.step = "capability"
    reply = await _command(conn, "A0", "CAPABILITY")
    if reply.status != "OK":
        raise _failure(conn, reply)
    caps = _capabilities(reply.untagged)
    if "AUTH=XOAUTH2" not in caps:
        offered = " ".join(sorted(c for c in caps if c.startswith("AUTH="))) or "no AUTH= mechanisms"
        raise conn.fail(Reason.XOAUTH2_NOT_OFFERED, f"CAPABILITY lists {offered}")

    conn.step = "authenticate"
    sasl = initial_response(user, token)
    if "SASL-IR" in caps:
        reply = await _command(conn, "A1", f"AUTHENTICATE XOAUTH2 {sasl}",
                               shown="AUTHENTICATE XOAUTH2 [REDACTED]")
    else:
        reply = await _command(conn, "A1", "AUTHENTICATE XOAUTH2")
        if reply.status == "+":
            await conn.send(sasl, shown=SASL_PLACEHOLDER)
            reply = await _read_reply(conn, "A1")
    if reply.status == "+":
        # error challenge after our response: acknowledge with an empty line, expect NO
        challenge = describe_challenge(conn.last_raw[1:])  # the "+ <b64>" line, unscrubbed
        conn.transcript.note(challenge)
        await conn.send("")
        reply = await _read_reply(conn, "A1")
        if reply.status in ("+", "OK"):
            raise conn.fail(Reason.PROTOCOL_ERROR,
                            f"after the error challenge the server said {reply.text[:120]}")
        reason = classify_reply(IMAP_RULES, conn.step, reply.status, reply.text)
        if reason is Reason.PROTOCOL_ERROR:  # a refusal after the challenge is the login failing
            reason = Reason.AUTH_FAILED
        raise conn.fail(reason, f"{reply.text} ({challenge})")
    if reply.status != "OK":
        raise _failure(conn, reply)

    conn.step = "examine"
    reply = await _command(conn, "A2", "EXAMINE INBOX")
    if reply.status != "OK":
        raise _failure(conn, reply)
    facts: dict[str, float | str] = {}
    for line in reply.untagged:
        m = _EXISTS.match(line)
        if m:
            facts[MESSAGES] = float(m.group(1))
    if MESSAGES not in facts:
        conn.transcript.note("EXAMINE completed without an EXISTS count")
    if facts.get(MESSAGES, 0) > 0:
        facts.update(await best_effort(conn, "FETCH 1 (INTERNALDATE)", lambda: _oldest_internaldate(conn)))
    return facts


async def _oldest_internaldate(conn: MailConnection) -> float | None:
    """Arrival time of message 1 (the oldest) in the EXAMINEd INBOX; None (noted) if the server
    did not say. FETCH INTERNALDATE on a read-only mailbox changes no flag (see probes/oldest.py)."""
    reply = await _command(conn, "F1", "FETCH 1 (INTERNALDATE)")
    if reply.status != "OK":
        conn.transcript.note(f"oldest message: FETCH answered {reply.text[:120]} (login check unaffected)")
        return None
    for line in reply.untagged:
        if line.upper().startswith("* 1 FETCH"):
            when = parse_internaldate(line)
            if when is not None:
                return when
    conn.transcript.note("oldest message: no INTERNALDATE in the FETCH reply (login check unaffected)")
    return None


async def _logout(conn: MailConnection) -> None:
    conn.step = "logout"
    await conn.send("A3 LOGOUT")
    await _read_reply(conn, "A3")


async def probe_imap(endpoint: Endpoint, user: str, token: str, timeout: float) -> ProbeResult:
    """Log in to IMAP with XOAUTH2 and open INBOX read-only. Never raises for a failed check;
    `timeout` bounds the whole probe."""
    secrets = sasl_secrets(user, token)

    async def session(conn: MailConnection) -> dict[str, float | str]:
        return await _session(conn, user, token)

    # Always implicit TLS (993): the probe never speaks IMAP STARTTLS, so a token can never be
    # sent in the clear whatever the endpoint says.
    return await run_probe(endpoint, timeout, implicit_tls=True, session=session,
                           goodbye=_logout, secrets=secrets)
