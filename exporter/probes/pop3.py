"""POP3 probe: greeting, CAPA, AUTH XOAUTH2 (initial response on its own line), STAT, QUIT.

Why the initial response goes on a separate line: Exchange Online rejects the one-line form
`AUTH XOAUTH2 <b64>` with `-ERR Protocol error. Connection is closed. 10`; it wants
`AUTH XOAUTH2`, waits for `+`, then takes the base64 string as the next line. A `+ <challenge>`
after our response is the server's error challenge: we answer with an empty line and expect
`-ERR`. poplib has no AUTH helper at all, hence this client (see mailconn for the rest of why).

STAT is the post-login check (it proves the maildrop opened) and gives the `messages` fact;
when there is a message, `TOP 1 0` gives the oldest one's Date header (probes/oldest.py).
Nothing is retrieved or deleted: QUIT in the TRANSACTION state commits deletions, and we never
mark any. The reply classification is the POP3_RULES table.
"""

from __future__ import annotations

import re

from ..config import Endpoint
from ..facts import MESSAGES
from ..reasons import Reason
from .mailconn import MailConnection, ProbeFailure, classify_reply, rule, run_probe
from .oldest import best_effort, parse_date_header, unfold
from .result import ProbeResult
from .sasl import describe_challenge, initial_response, sasl_secrets

MAX_CAPA_LINES = 200
MAX_TOP_LINES = 500  # header lines of message 1 accepted from TOP 1 0 (real headers: 20-150)
SASL_PLACEHOLDER = "[REDACTED SASL RESPONSE]"

# Reply classification for -ERR replies, first match wins; anything unmatched is PROTOCOL_ERROR.
# Steps: greeting, capa, auth start (after "AUTH XOAUTH2"), authenticate (after the response), stat.
# RFC 2449 / RFC 3206 response codes decide first: Dovecot says "-ERR [SYS/TEMP] Temporary
# authentication failure." when its token validation is down, which is not the credentials.
def _code(*names: str) -> str:
    """The -ERR reply starts with one of these RFC 2449 response codes."""
    return r"^-ERR\s+\[(?:" + "|".join(names) + r")[\]/ ]"


POP3_RULES = (
    rule(Reason.SERVER_TEMPORARY_FAILURE, "-ERR", _code("SYS/TEMP")),
    rule(Reason.SERVER_UNAVAILABLE, "-ERR", _code("SYS/PERM", "SYS")),
    rule(Reason.MAILBOX_IN_USE, "-ERR", _code("IN-USE", "LOGIN-DELAY")),
    rule(Reason.AUTH_FAILED, "-ERR", _code("AUTH")),
    rule(Reason.SERVER_UNAVAILABLE, "-ERR", steps={"greeting"}),
    rule(Reason.XOAUTH2_NOT_OFFERED, "-ERR",
         r"unrecogni[sz]ed|unsupported|not supported|unknown (authentication|auth|mechanism)",
         steps={"auth start"}),
    rule(Reason.AUTH_FAILED, "-ERR", r"authentication fail"),  # Exchange's XOAUTH2 failure
    rule(Reason.PROTOCOL_ERROR, "-ERR", r"protocol error"),  # Exchange: one-line AUTH form
    rule(Reason.SERVER_UNAVAILABLE, "-ERR", r"unavailable|try again later"),
    rule(Reason.AUTH_FAILED, "-ERR", steps={"auth start", "authenticate"}),
    rule(Reason.MAILBOX_NOT_ACCESSIBLE, "-ERR", steps={"stat"}),
)

_STAT = re.compile(r"^\+OK (\d{1,10}) (\d{1,20})\b", re.I)


def _status(line: str) -> str:
    """+OK, -ERR or + (continuation); "" for anything else."""
    upper = line.upper()
    if upper.startswith("+OK") and (len(line) == 3 or line[3] == " "):
        return "+OK"
    if upper.startswith("-ERR") and (len(line) == 4 or line[4] == " "):
        return "-ERR"
    if line == "+" or line.startswith("+ "):
        return "+"
    return ""


def _failure(conn: MailConnection, line: str) -> ProbeFailure:
    status = _status(line)
    reason = Reason.PROTOCOL_ERROR
    if status == "-ERR":
        reason = classify_reply(POP3_RULES, conn.step, status, line)
    return conn.fail(reason, line)


async def _capa(conn: MailConnection) -> bool | None:
    """True/False: XOAUTH2 offered or not; None: CAPA unsupported (we try AUTH anyway)."""
    await conn.send("CAPA")
    first = await conn.readline()
    status = _status(first)
    if status == "-ERR":
        conn.transcript.note("CAPA not supported; trying AUTH XOAUTH2 anyway")
        return None
    if status != "+OK":
        raise _failure(conn, first)
    offered = False
    for _ in range(MAX_CAPA_LINES):
        line = await conn.readline()
        if line == ".":
            return offered
        words = line.removeprefix(".").upper().split()
        if words and words[0] == "SASL" and "XOAUTH2" in words[1:]:
            offered = True
    raise conn.fail(Reason.PROTOCOL_ERROR, f"CAPA list longer than {MAX_CAPA_LINES} lines")


async def _session(conn: MailConnection, user: str, token: str) -> dict[str, float | str]:
    conn.step = "greeting"
    greeting = await conn.readline()
    if _status(greeting) != "+OK":
        raise _failure(conn, greeting)
    conn.healthy = True

    conn.step = "capa"
    if await _capa(conn) is False:
        raise conn.fail(Reason.XOAUTH2_NOT_OFFERED, "CAPA has no SASL line listing XOAUTH2")

    conn.step = "auth start"
    sasl = initial_response(user, token)
    await conn.send("AUTH XOAUTH2")
    line = await conn.readline()
    if _status(line) != "+":
        raise _failure(conn, line)

    conn.step = "authenticate"
    await conn.send(sasl, shown=SASL_PLACEHOLDER)
    line = await conn.readline()
    status = _status(line)
    if status == "+":
        challenge = describe_challenge(conn.last_raw[1:])  # the "+ <b64>" line, unscrubbed
        conn.transcript.note(challenge)
        await conn.send("")
        final = await conn.readline()
        if _status(final) != "-ERR":
            raise conn.fail(Reason.PROTOCOL_ERROR, f"after the error challenge the server said {final[:120]}")
        reason = classify_reply(POP3_RULES, conn.step, "-ERR", final)
        if reason is Reason.PROTOCOL_ERROR:  # a refusal after the challenge is the login failing
            reason = Reason.AUTH_FAILED
        raise conn.fail(reason, f"{final} ({challenge})")
    if status != "+OK":
        raise _failure(conn, line)

    conn.step = "stat"
    await conn.send("STAT")
    line = await conn.readline()
    m = _STAT.match(line)
    if m is None:
        raise _failure(conn, line)
    facts: dict[str, float | str] = {MESSAGES: float(m.group(1))}
    if facts[MESSAGES] > 0:
        facts.update(await best_effort(conn, "TOP 1 0", lambda: _oldest_date(conn)))
    return facts


async def _oldest_date(conn: MailConnection) -> float | None:
    """The Date header of message 1 (the oldest) from `TOP 1 0`; None (noted) if unavailable.
    TOP reads headers only and marks nothing; we never send RETR or DELE (see probes/oldest.py)."""
    await conn.send("TOP 1 0")
    first = await conn.readline()
    if _status(first) != "+OK":
        conn.transcript.note(f"oldest message: TOP answered {first[:120]} (login check unaffected)")
        return None
    headers: list[str] = []
    for _ in range(MAX_TOP_LINES):
        line = await conn.readline()
        if line == ".":
            break
        headers.append(line[1:] if line.startswith("..") else line)  # dot-unstuffing
    else:
        conn.healthy = False  # the rest of the reply is still coming: no QUIT on this connection
        conn.transcript.note(f"oldest message: TOP reply longer than {MAX_TOP_LINES} lines (login check unaffected)")
        return None
    when = parse_date_header(unfold(headers[:headers.index("")] if "" in headers else headers))
    if when is None:
        conn.transcript.note("oldest message: no parseable Date header in TOP 1 0 (login check unaffected)")
    return when


async def _quit(conn: MailConnection) -> None:
    conn.step = "quit"
    await conn.send("QUIT")
    await conn.readline()


async def probe_pop3(endpoint: Endpoint, user: str, token: str, timeout: float) -> ProbeResult:
    """Log in to POP3 with XOAUTH2 and STAT the maildrop. Never raises for a failed check;
    `timeout` bounds the whole probe."""

    async def session(conn: MailConnection) -> dict[str, float | str]:
        return await _session(conn, user, token)

    # Always implicit TLS (995): the probe never speaks STLS, so the token is never sent in clear.
    return await run_probe(endpoint, timeout, implicit_tls=True, session=session, goodbye=_quit,
                           secrets=sasl_secrets(user, token))
