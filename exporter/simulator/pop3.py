"""Simulated Exchange Online POP3 server (implicit TLS, like outlook.office365.com:995).

Why it exists: Exchange's POP3 XOAUTH2 has a quirk probes get wrong: the initial response
must go on its own line after the server's `+ ` (`AUTH XOAUTH2` alone); the one-line form
`AUTH XOAUTH2 <b64>` is a protocol error that closes the connection. The simulator enforces
that, and `STAT` feeds the exporter's mailbox backlog gauge.

Implemented: CAPA, AUTH XOAUTH2 / PLAIN (PLAIN always fails: basic auth is off), USER/PASS
(always fail), STAT, LIST, UIDL, NOOP, RSET, TOP (headers with the Date the exporter reads as the
oldest message's age), RETR (marks the message read, as Exchange does), DELE (committed at
QUIT), QUIT. Texts are Exchange Online's where known;
their trailing numbers (`. 10`) are Exchange's internal codes and part of the text.
"""

from __future__ import annotations

from .imap import failure_challenge
from .mailserver import Connection, MailServer
from .messages import body, headers
from .state import SimMailbox
from .xoauth2 import AuthResult, authorize, fault_reply

MESSAGE_SIZE = 2048  # octets per simulated message (STAT/LIST)

AUTH_OK = "+OK User successfully authenticated."
AUTH_FAILED = "-ERR Authentication failure: unknown user name or bad password."
ONE_LINE_ERROR = "-ERR Protocol error. Connection is closed. 10"
PROTOCOL_ERROR = "-ERR Protocol error. 14"
INVALID_STATE = "-ERR Command is not valid in this state."
UNAVAILABLE = "-ERR Server Unavailable. 21"
SIGNING_OFF = "+OK Microsoft Exchange Server POP3 server signing off."


class Pop3Server(MailServer):
    protocol = "pop3"
    implicit_tls = True

    def capa_lines(self) -> list[str]:
        sasl = "SASL PLAIN" if self.fault.no_xoauth2 else "SASL PLAIN XOAUTH2"
        return ["+OK", "TOP", "UIDL", sasl, "USER", "."]

    async def refuse(self, conn: Connection) -> None:
        await conn.send(UNAVAILABLE)

    async def greet(self, conn: Connection) -> None:
        await conn.send(f"+OK The Microsoft Exchange POP3 service is ready. [{self.host_tag}]")

    async def line_too_long(self, conn: Connection) -> None:
        await conn.send(ONE_LINE_ERROR)

    async def session(self, conn: Connection) -> None:
        auth: AuthResult | None = None
        async for line in self.commands(conn):
            command, _, args = line.strip().partition(" ")
            command, args = command.upper(), args.strip()
            if command == "CAPA":
                await conn.send(*self.capa_lines())
            elif command == "QUIT":
                if auth is not None and auth.mailbox is not None:
                    commit_deletions(auth.mailbox)  # UPDATE state (RFC 1939 6)
                await conn.send(SIGNING_OFF)
                return
            elif command in ("TOP", "RETR", "DELE"):
                if auth is None or auth.mailbox is None:
                    await conn.send(INVALID_STATE)
                else:
                    await conn.send(*message_command(command, args, auth.mailbox))
            elif command == "AUTH":
                if auth is not None:
                    await conn.send(INVALID_STATE)
                    continue
                mechanism, _, response = args.partition(" ")
                if response.strip() and mechanism.upper() == "XOAUTH2":
                    # Exchange insists on the response on a line of its own
                    self.state.count(self.protocol, "", "protocol_error")
                    await conn.send(ONE_LINE_ERROR)
                    return
                auth = await self._authenticate(conn, mechanism.upper(), response.strip())
            elif command in ("USER", "PASS"):
                if auth is not None:
                    await conn.send(INVALID_STATE)
                elif command == "USER":
                    await conn.send("+OK")
                else:  # basic authentication is disabled in Exchange Online
                    self.state.count(self.protocol, "", "basic_auth")
                    await conn.send(AUTH_FAILED)
            elif command in ("STAT", "LIST", "UIDL", "NOOP", "RSET"):
                if auth is None or auth.mailbox is None:
                    await conn.send(INVALID_STATE)
                    continue
                count = max(0, int(auth.mailbox.messages))
                if command == "STAT":
                    await conn.send(f"+OK {count} {count * MESSAGE_SIZE}")
                elif command == "LIST":
                    items = [f"{i} {MESSAGE_SIZE}" for i in range(1, count + 1)]
                    await conn.send(f"+OK {count} messages ({count * MESSAGE_SIZE} octets)", *items, ".")
                elif command == "UIDL":
                    await conn.send("+OK", *[f"{i} AAAAAAAAAAA{i:08d}" for i in range(1, count + 1)], ".")
                else:
                    await conn.send("+OK")
            else:
                await conn.send(PROTOCOL_ERROR)

    async def _authenticate(self, conn: Connection, mechanism: str, response: str) -> AuthResult | None:
        """AUTH <mech>: `+ `, the response line, then +OK or -ERR; the result on success."""
        xoauth2 = mechanism == "XOAUTH2" and not self.fault.no_xoauth2
        if not xoauth2 and mechanism != "PLAIN":
            await conn.send(PROTOCOL_ERROR if not mechanism else "-ERR Unrecognized authentication type.")
            return None
        if not response:
            await conn.send("+ ")
            response = (await conn.readline()).strip()
        if response == "*":
            await conn.send("-ERR Authentication canceled.")
            return None
        if not xoauth2:  # PLAIN: basic authentication is disabled in Exchange Online
            self.state.count(self.protocol, "", "basic_auth")
            await conn.send(AUTH_FAILED)
            return None
        result = authorize(self.state, self.minter, self.protocol, response)
        if self.fault.auth_reply is not None:
            await conn.send(fault_reply(self.fault.auth_reply, response, self.fault.echo_secret))
            return None
        if result.outcome.ok:
            await conn.send(AUTH_OK)
            return result
        if self.fault.challenge_on_failure:
            await conn.send(f"+ {failure_challenge(result.outcome)}")
            await conn.readline()  # the client's (empty) answer to the error challenge
        await conn.send(AUTH_FAILED)
        return None


def _stuff(lines: list[str]) -> list[str]:
    """RFC 1939 byte-stuffing of a multi-line reply's lines."""
    return ["." + line if line.startswith(".") else line for line in lines]


def message_command(command: str, args: str, mailbox: SimMailbox) -> list[str]:
    """TOP msg n / RETR msg / DELE msg on the authenticated maildrop."""
    count = max(0, int(mailbox.messages))
    words = args.split()
    try:
        number = int(words[0])
        lines = int(words[1]) if command == "TOP" else 0
    except (IndexError, ValueError):
        return [PROTOCOL_ERROR]
    if not 1 <= number <= count or number in mailbox.deleted or lines < 0:
        return ["-ERR The specified message is out of range."]
    if command == "DELE":
        mailbox.deleted.add(number)
        return [f"+OK Message {number} marked for deletion."]
    if command == "RETR":
        mailbox.seen.add(number)
        return [f"+OK {MESSAGE_SIZE} octets", *_stuff(body(mailbox, number)), "."]
    text = body(mailbox, number)[:len(headers(mailbox, number)) + 1 + lines]
    return ["+OK", *_stuff(text), "."]


def commit_deletions(mailbox: SimMailbox) -> None:
    """QUIT after DELE: the marked messages are gone (the rest renumber, the oldest may be newer)."""
    if mailbox.deleted:
        mailbox.messages = max(0, int(mailbox.messages) - len(mailbox.deleted))
        mailbox.deleted.clear()
        mailbox.seen.clear()
