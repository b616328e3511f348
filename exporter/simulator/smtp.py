"""Simulated Exchange Online SMTP submission server (plain + STARTTLS, like smtp.office365.com:587).

Why it exists: SMTP AUTH is where Exchange Online's tenant and mailbox policies surface
(5.7.139 SmtpClientAuthentication disabled, security defaults, Conditional Access, 5.5.124
bad user address), each needing a different fix by the operator, so the exporter's reason
mapping is tested against the exact texts. XOAUTH2 is only advertised after STARTTLS, which
upgrades the same connection, as Exchange does.

Mail transfer: the exporter never sends mail unless an explicit canary is configured, so
there is no delivery. After AUTH, MAIL/RCPT are accepted, DATA is read (bounded) and
discarded with a "Queued mail for delivery" reply and counted as
("smtp", <user>, "message_accepted"); mailbox message counts do not change. BDAT is not
implemented (502) although CHUNKING is advertised, like the EHLO list it copies.
"""

from __future__ import annotations

import email.utils
import uuid

from .imap import failure_challenge
from .mailserver import Connection, MailServer
from .xoauth2 import AuthResult, Outcome, authorize, fault_reply

MAX_DATA = 10 * 1024 * 1024  # bytes of DATA read before 552

AUTH_OK = "235 2.7.0 Authentication successful"
UNRECOGNIZED_AUTH = "504 5.7.4 Unrecognized authentication type"
NOT_AUTHENTICATED = "530 5.7.57 Client not authenticated to send mail."
INVALID_USER = "501 5.5.124 Invalid XOAUTH2 auth data - User address provided is not valid"
CANNOT_DECODE = "501 5.5.2 Cannot Decode response"
UNAVAILABLE = "421 4.3.2 Service not available"
CLOSING = "221 2.0.0 Service closing transmission channel"
TLS_READY = "220 2.0.0 SMTP server ready"
UNRECOGNIZED = "500 5.3.3 Unrecognized command"
BAD_SEQUENCE = "503 5.5.1 Bad sequence of commands"
SEND_HELLO = "503 5.5.2 Send hello first"

# failure texts ending in " [HOST]" (host name of the front end that answered)
FAILED = "535 5.7.3 Authentication unsuccessful"
TENANT_DISABLED = (
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. "
    "Visit https://aka.ms/smtp_auth_disabled for more information."
)
MAILBOX_DISABLED = (
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. "
    "Visit https://aka.ms/smtp_auth_disabled for more information."
)
SECURITY_DEFAULTS = (
    "535 5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults "
    "policy. Contact your administrator."
)
CONDITIONAL_ACCESS = (
    "535 5.7.139 Authentication unsuccessful, the request did not meet the criteria to be authenticated "
    "successfully. Contact your administrator."
)
BASIC_AUTH_DISABLED = "535 5.7.139 Authentication unsuccessful, basic authentication is disabled."

_WITH_HOST = {
    Outcome.SMTP_DISABLED_TENANT: TENANT_DISABLED,
    Outcome.SMTP_DISABLED_MAILBOX: MAILBOX_DISABLED,
    Outcome.SECURITY_DEFAULTS: SECURITY_DEFAULTS,
    Outcome.CONDITIONAL_ACCESS: CONDITIONAL_ACCESS,
}
_WITHOUT_HOST = {
    Outcome.OK: AUTH_OK,
    Outcome.BAD_BASE64: CANNOT_DECODE,
    Outcome.MALFORMED: INVALID_USER,
    Outcome.UNKNOWN_USER: INVALID_USER,
}


class SmtpServer(MailServer):
    protocol = "smtp"
    implicit_tls = False

    def reply_for(self, outcome: Outcome) -> str:
        """The final AUTH reply for an XOAUTH2 outcome."""
        if outcome in _WITHOUT_HOST:
            return _WITHOUT_HOST[outcome]
        return f"{_WITH_HOST.get(outcome, FAILED)} [{self.host_name}]"

    def ehlo_lines(self, conn: Connection) -> list[str]:
        fault = self.fault
        lines = [f"{self.host_name} Hello [{conn.peer_ip}]", "SIZE 157286400", "PIPELINING", "DSN"]
        lines.append("ENHANCEDSTATUSCODES")
        if not conn.tls and not fault.no_starttls:
            lines.append("STARTTLS")
        if conn.tls:
            lines.append(fault.ehlo_auth or ("AUTH LOGIN" if fault.no_xoauth2 else "AUTH LOGIN XOAUTH2"))
        lines += ["8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8"]
        return [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]

    async def refuse(self, conn: Connection) -> None:
        await conn.send(UNAVAILABLE)

    async def greet(self, conn: Connection) -> None:
        now = email.utils.formatdate(usegmt=False)
        await conn.send(f"220 {self.host_name} Microsoft ESMTP MAIL Service ready at {now}")

    async def line_too_long(self, conn: Connection) -> None:
        await conn.send("500 5.5.2 Line too long")

    async def session(self, conn: Connection) -> None:
        helo = False
        auth: AuthResult | None = None
        sender = recipients = 0
        async for line in self.commands(conn):
            verb, _, args = line.strip().partition(" ")
            verb, args = verb.upper(), args.strip()
            if verb == "EHLO" or verb == "HELO":
                if not args:
                    await conn.send("501 5.5.4 Invalid domain name")
                    continue
                helo, sender, recipients = True, 0, 0
                if verb == "EHLO":
                    await conn.send(*self.ehlo_lines(conn))
                else:
                    await conn.send(f"250 {self.host_name} Hello [{conn.peer_ip}]")
            elif verb == "STARTTLS":
                if conn.tls:
                    await conn.send(BAD_SEQUENCE)
                elif self.fault.no_starttls:
                    await conn.send(f"{UNRECOGNIZED} 'STARTTLS'")
                else:
                    if conn.discard_buffered():
                        self.state.count(self.protocol, "", "starttls_pipelined_input_discarded")
                    await conn.send(TLS_READY, drain=False)  # no yield before the handshake starts
                    if not await conn.start_tls():
                        return
                    helo, auth, sender, recipients = False, None, 0, 0  # RFC 3207: forget everything
            elif verb == "AUTH":
                if not helo:
                    await conn.send(SEND_HELLO)
                elif auth is not None:
                    await conn.send(BAD_SEQUENCE)
                elif not conn.tls:
                    await conn.send(UNRECOGNIZED_AUTH)
                else:
                    auth = await self._authenticate(conn, args)
            elif verb == "MAIL":
                if not helo:
                    await conn.send(SEND_HELLO)
                elif auth is None:
                    await conn.send(NOT_AUTHENTICATED)
                else:
                    sender, recipients = 1, 0
                    await conn.send("250 2.1.0 Sender OK")
            elif verb == "RCPT":
                if not sender:
                    await conn.send(BAD_SEQUENCE)
                else:
                    recipients += 1
                    await conn.send("250 2.1.5 Recipient OK")
            elif verb == "DATA":
                if not recipients or auth is None:
                    await conn.send(BAD_SEQUENCE)
                elif not await self._data(conn, auth):
                    return
                sender = recipients = 0
            elif verb == "RSET":
                sender = recipients = 0
                await conn.send("250 2.0.0 Resetting")
            elif verb == "NOOP":
                await conn.send("250 2.0.0 OK")
            elif verb == "QUIT":
                await conn.send(CLOSING)
                return
            elif verb == "BDAT":
                await conn.send("502 5.3.3 Command not implemented")
            else:
                await conn.send(UNRECOGNIZED)

    async def _authenticate(self, conn: Connection, args: str) -> AuthResult | None:
        mechanism, _, response = args.partition(" ")
        mechanism, response = mechanism.upper(), response.strip()
        if mechanism == "LOGIN":  # basic authentication is disabled in Exchange Online
            if not response:
                await conn.send("334 VXNlcm5hbWU6")
                if (await conn.readline()).strip() == "*":
                    await conn.send("501 5.0.0 Authentication aborted")
                    return None
            await conn.send("334 UGFzc3dvcmQ6")
            if (await conn.readline()).strip() == "*":
                await conn.send("501 5.0.0 Authentication aborted")
                return None
            self.state.count(self.protocol, "", "basic_auth")
            await conn.send(f"{BASIC_AUTH_DISABLED} [{self.host_name}]")
            return None
        if mechanism != "XOAUTH2" or self.fault.no_xoauth2:
            await conn.send(UNRECOGNIZED_AUTH)
            return None
        if not response:
            await conn.send("334 ")
            response = (await conn.readline()).strip()
            if response == "*":
                await conn.send("501 5.0.0 Authentication aborted")
                return None
        result = authorize(self.state, self.minter, self.protocol, "" if response == "=" else response)
        if self.fault.auth_reply is not None:
            await conn.send(fault_reply(self.fault.auth_reply, response, self.fault.echo_secret))
            return None
        if result.outcome.ok:
            await conn.send(AUTH_OK)
            return result
        if self.fault.challenge_on_failure:
            await conn.send(f"334 {failure_challenge(result.outcome)}")
            await conn.readline()  # the client's (empty) answer to the error challenge
        await conn.send(self.reply_for(result.outcome))
        return None

    async def _data(self, conn: Connection, auth: AuthResult) -> bool:
        """Read a message up to the lone dot and discard it; False if the connection must end."""
        await conn.send("354 Start mail input; end with <CRLF>.<CRLF>")
        size = 0
        while size <= MAX_DATA:  # bounded: every line adds at least its CRLF
            line = await conn.readline()
            if line == ".":
                break
            size += len(line) + 2
        else:
            await conn.send("552 5.3.4 Message size exceeds fixed maximum message size")
            return False
        self.state.count(self.protocol, auth.user, "message_accepted")
        queue_id = uuid.uuid4().hex.upper()
        await conn.send(f"250 2.6.0 <{queue_id}@{self.host_name}> [InternalId=1] Queued mail for delivery")
        return True
