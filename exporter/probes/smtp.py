"""SMTP submission probe: greeting, EHLO, STARTTLS, EHLO, AUTH XOAUTH2, QUIT — never any mail.

Why this exact order: Exchange Online (smtp.office365.com:587) advertises XOAUTH2 only after
STARTTLS, so the probe must upgrade the same connection and EHLO again before it can even
see the mechanism. The TLS upgrade refuses to start if the server sent bytes after its `220`
(plaintext read as if TLS protected it is the STARTTLS-injection bug class).

Why a big classification table: Exchange Online answers most configuration problems with the
same `535 5.7.139` enhanced code and a different sentence (SMTP AUTH disabled for the tenant or
mailbox, security defaults, Conditional Access, basic auth disabled). Each maps to a different
operator fix, so SMTP_RULES matches the enhanced status code plus the sentence; order matters
(first match wins) and an unmatched reply is PROTOCOL_ERROR. A `334` challenge after our
response (Gmail's JSON error) is answered with an empty line and the final code classified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import Endpoint
from ..reasons import Reason
from .mailconn import MailConnection, ProbeFailure, classify_reply, rule, run_probe
from .result import ProbeResult
from .sasl import describe_challenge, initial_response, sasl_secrets

MAX_REPLY_LINES = 100  # lines in one (multi-line) reply; Exchange's EHLO has ~12

# Reply classification, first match wins; anything unmatched is PROTOCOL_ERROR.
# status is the 3-digit code (matched as a prefix: "5" means any 5xx); text is the whole reply.
# Steps: greeting, ehlo, starttls, ehlo (tls), authenticate.
SMTP_RULES = (
    rule(Reason.SERVER_UNAVAILABLE, "421"),  # service not available, closing channel
    rule(Reason.SERVER_UNAVAILABLE, "4", steps={"greeting"}),
    rule(Reason.SERVER_UNAVAILABLE, "5", steps={"greeting"}),  # 554 no SMTP service here
    rule(Reason.STARTTLS_UNAVAILABLE, None, steps={"starttls"}),  # 454 4.7.0 TLS not available, ...
    # Exchange Online 5.7.139 variants (see domain-facts.md)
    rule(Reason.SMTP_AUTH_DISABLED, "5", r"\b5\.7\.139\b.*SmtpClientAuthentication is disabled"),
    rule(Reason.SECURITY_DEFAULTS, "5", r"\b5\.7\.139\b.*security defaults"),
    rule(Reason.CONDITIONAL_ACCESS, "5", r"\b5\.7\.139\b.*did not meet the criteria"),
    rule(Reason.AUTH_FAILED, "5", r"\b5\.7\.139\b.*basic authentication is disabled"),
    rule(Reason.AUTH_FAILED, "535", r"\b5\.7\.3\b"),  # 535 5.7.3 Authentication unsuccessful
    rule(Reason.INVALID_USER, "501", r"\b5\.5\.124\b"),  # Invalid XOAUTH2 auth data - User address
    rule(Reason.AUTH_FAILED, None, r"\b5\.7\.30\b"),  # basic authentication is not supported
    rule(Reason.XOAUTH2_NOT_OFFERED, "504"),  # 504 5.7.4 Unrecognized authentication type
    rule(Reason.SERVER_TEMPORARY_FAILURE, "454", steps={"authenticate"}),  # 4.7.0 temporary auth failure
    rule(Reason.AUTH_FAILED, "535"),  # any other 535: RFC 4954 "credentials invalid"
)

_REPLY = re.compile(r"^(\d{3})(?:([ -])(.*))?$", re.S)


@dataclass
class SmtpReply:
    code: str
    lines: list[str]

    @property
    def text(self) -> str:
        return f"{self.code} " + " ".join(line for line in self.lines if line)


async def _read_reply(conn: MailConnection) -> SmtpReply:
    code: str | None = None
    lines: list[str] = []
    for _ in range(MAX_REPLY_LINES):
        line = await conn.readline()
        m = _REPLY.match(line)
        if m is None:
            raise conn.fail(Reason.PROTOCOL_ERROR, f"malformed SMTP reply line: {line[:120]}")
        if code is not None and m.group(1) != code:
            raise conn.fail(Reason.PROTOCOL_ERROR, f"reply code changed within a reply: {line[:120]}")
        code = m.group(1)
        lines.append(m.group(3) or "")
        if m.group(2) != "-":
            return SmtpReply(code, lines)
    raise conn.fail(Reason.PROTOCOL_ERROR, f"reply longer than {MAX_REPLY_LINES} lines")


async def _command(conn: MailConnection, command: str, *, shown: str | None = None) -> SmtpReply:
    await conn.send(command, shown=shown)
    return await _read_reply(conn)


def _failure(conn: MailConnection, reply: SmtpReply) -> ProbeFailure:
    return conn.fail(classify_reply(SMTP_RULES, conn.step, reply.code, reply.text), reply.text)


def _keywords(reply: SmtpReply) -> dict[str, list[str]]:
    """EHLO extensions: keyword -> parameters (the first line is the greeting, skipped)."""
    out: dict[str, list[str]] = {}
    for line in reply.lines[1:]:
        words = line.upper().split()
        if not words:
            continue
        if words[0].startswith("AUTH="):  # old-style "AUTH=LOGIN PLAIN"
            out.setdefault("AUTH", []).extend([words[0][5:], *words[1:]])
        else:
            out.setdefault(words[0], []).extend(words[1:])
    return out


async def _ehlo(conn: MailConnection, name: str) -> dict[str, list[str]]:
    reply = await _command(conn, f"EHLO {name}")
    if reply.code != "250":
        raise _failure(conn, reply)
    return _keywords(reply)


_EHLO_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})|\[[0-9A-Fa-f:.IPv]{2,60}\]")


async def _session(conn: MailConnection, user: str, token: str, ehlo_name: str,
                   starttls: bool) -> dict[str, float | str]:
    conn.step = "greeting"
    if not _EHLO_NAME.fullmatch(ehlo_name):
        raise ProbeFailure(Reason.UNKNOWN, "invalid ehlo_name (expected a host name or address literal)")
    greeting = await _read_reply(conn)
    if greeting.code != "220":
        raise _failure(conn, greeting)
    conn.healthy = True

    conn.step = "ehlo"
    extensions = await _ehlo(conn, ehlo_name)
    if starttls:
        if "STARTTLS" not in extensions:
            raise conn.fail(Reason.STARTTLS_UNAVAILABLE, "EHLO does not list STARTTLS")
        conn.step = "starttls"
        reply = await _command(conn, "STARTTLS")
        if reply.code != "220":
            raise _failure(conn, reply)
        conn.healthy = False  # until the handshake succeeds, QUIT is not safe to send
        await conn.start_tls()
        conn.healthy = True
        conn.step = "ehlo (tls)"
        extensions = await _ehlo(conn, ehlo_name)

    conn.step = "authenticate"
    mechanisms = extensions.get("AUTH", [])
    if "XOAUTH2" not in mechanisms:
        offered = " ".join(mechanisms) or "no AUTH extension"
        raise conn.fail(Reason.XOAUTH2_NOT_OFFERED, f"EHLO AUTH lists {offered}")
    sasl = initial_response(user, token)
    reply = await _command(conn, f"AUTH XOAUTH2 {sasl}", shown="AUTH XOAUTH2 [REDACTED]")
    if reply.code == "334":
        challenge = describe_challenge(conn.last_raw[4:])  # the final "334 <b64>" line, unscrubbed
        conn.transcript.note(challenge)
        reply = await _command(conn, "")
        if reply.code in ("334", "235"):
            raise conn.fail(Reason.PROTOCOL_ERROR,
                            f"after the error challenge the server said {reply.text[:120]}")
        raise conn.fail(classify_reply(SMTP_RULES, conn.step, reply.code, reply.text),
                        f"{reply.text} ({challenge})")
    if reply.code != "235":
        raise _failure(conn, reply)
    return {}


async def _quit(conn: MailConnection) -> None:
    conn.step = "quit"
    await _command(conn, "QUIT")


async def probe_smtp(
    endpoint: Endpoint,
    user: str,
    token: str,
    timeout: float,  # the whole-probe budget (asyncio.timeout_at inside)
    ehlo_name: str = "m365-mail-exporter",
) -> ProbeResult:
    """Authenticate to SMTP submission with XOAUTH2 (no mail is sent). Never raises for a failed
    check; `timeout` bounds the whole probe. `endpoint.starttls` False means implicit TLS (465)."""

    async def session(conn: MailConnection) -> dict[str, float | str]:
        return await _session(conn, user, token, ehlo_name, endpoint.starttls)

    return await run_probe(endpoint, timeout, implicit_tls=not endpoint.starttls, session=session,
                           goodbye=_quit, secrets=sasl_secrets(user, token))
