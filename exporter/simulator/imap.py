"""Simulated Exchange Online IMAP4rev1 server (implicit TLS, like outlook.office365.com:993).

Why it exists: the exporter's IMAP probe must be tested against Exchange's real dialogue,
including its most treacherous behaviour: for a valid token whose identity has no access to
the mailbox named in `user=`, Exchange answers `OK AUTHENTICATE completed.` and only the next
SELECT/EXAMINE/NAMESPACE fails with `BAD User is authenticated but not connected.` and a BYE.
A probe that stops after AUTHENTICATE reports success for a mailbox nobody can read.

Only what a monitoring probe needs is implemented: CAPABILITY, ID, NOOP, LOGIN (always fails:
basic auth is off in Exchange Online), AUTHENTICATE XOAUTH2 (with or without SASL-IR) and
PLAIN (always fails), SELECT/EXAMINE INBOX, NAMESPACE, LIST, STATUS, FETCH and STORE (imapfetch.py:
enough to serve INTERNALDATE and to show \\Seen changes), UNSELECT/CLOSE, LOGOUT.
Texts marked "Exchange" are Exchange Online's; the trailing numbers on some (`. 14`) are
Exchange's internal codes and are part of the text.
"""

from __future__ import annotations

import base64
import json
import zlib

from .imapfetch import message_command
from .mailserver import Connection, MailServer
from .state import SimMailbox
from .xoauth2 import AuthResult, Outcome, authorize, fault_reply

CAPABILITIES = (
    "IMAP4",
    "IMAP4rev1",
    "AUTH=PLAIN",
    "AUTH=XOAUTH2",
    "SASL-IR",
    "UIDPLUS",
    "MOVE",
    "ID",
    "UNSELECT",
    "CHILDREN",
    "IDLE",
    "NAMESPACE",
    "LITERAL+",
)
SERVER_ID = '("name" "Microsoft.Exchange.Imap4.Imap4Server")'
FLAGS = r"(\Seen \Answered \Flagged \Deleted \Draft $MDNSent)"

BYE_UNAVAILABLE = "* BYE Server Unavailable. 15"
BYE_LOGOUT = "* BYE Microsoft Exchange Server IMAP4 server signing off."
BYE_NOT_CONNECTED = "* BYE Connection closed. 14"
NOT_CONNECTED = "BAD User is authenticated but not connected."
AUTH_OK = "OK AUTHENTICATE completed."
AUTH_FAILED = "NO AUTHENTICATE failed."
LOGIN_FAILED = "NO LOGIN failed."
INVALID_STATE = "BAD Command received in Invalid state."
COMMAND_ERROR = "BAD Command Error. 10"
ARGUMENT_ERROR = "BAD Command Argument Error. 11"

# The identity may use the token but cannot open the mailbox: Exchange's false success.
FALSE_SUCCESS = (Outcome.NO_ACCESS, Outcome.NOT_ACCESSIBLE)
# Commands that need a connection to the mailbox and so reveal the false success.
MAILBOX_COMMANDS = ("SELECT", "EXAMINE", "NAMESPACE", "LIST", "LSUB", "STATUS")


def _mailbox_name(args: str) -> str:
    name = args.strip()
    if name.startswith('"'):
        end = name.find('"', 1)
        return name[1:end] if end > 0 else name[1:]
    return name.split(" ", 1)[0]


def failure_challenge(outcome: Outcome, scope: str = "https://outlook.office365.com/.default") -> str:
    """Gmail-style SASL error challenge: base64 of a JSON status document."""
    status = "400" if outcome is Outcome.MISSING_SCOPE else "401"
    doc = {"status": status, "schemes": "Bearer", "scope": scope}
    return base64.b64encode(json.dumps(doc).encode()).decode()


class ImapServer(MailServer):
    protocol = "imap"
    implicit_tls = True

    def capability_line(self) -> str:
        caps = [c for c in CAPABILITIES if not (c == "AUTH=XOAUTH2" and self.fault.no_xoauth2)]
        return "* CAPABILITY " + " ".join(caps)

    async def refuse(self, conn: Connection) -> None:
        await conn.send(BYE_UNAVAILABLE)

    async def greet(self, conn: Connection) -> None:
        await conn.send(f"* OK The Microsoft Exchange IMAP4 service is ready. [{self.host_tag}]")

    async def line_too_long(self, conn: Connection) -> None:
        await conn.send(f"* {COMMAND_ERROR}", BYE_NOT_CONNECTED)

    async def session(self, conn: Connection) -> None:
        auth: AuthResult | None = None
        selected = read_only = False
        async for line in self.commands(conn):
            tag, _, rest = line.strip().partition(" ")
            command, _, args = rest.partition(" ")
            command, args = command.upper(), args.strip()
            if not tag or not command:
                await conn.send(f"{tag or '*'} {COMMAND_ERROR}")
            elif command == "CAPABILITY":
                await conn.send(self.capability_line(), f"{tag} OK CAPABILITY completed.")
            elif command == "NOOP":
                await conn.send(f"{tag} OK NOOP completed.")
            elif command == "ID":
                await conn.send(f"* ID {SERVER_ID}", f"{tag} OK ID completed.")
            elif command == "LOGOUT":
                await conn.send(BYE_LOGOUT, f"{tag} OK LOGOUT completed.")
                return
            elif command == "LOGIN":
                await conn.send(f"{tag} {INVALID_STATE if auth else LOGIN_FAILED}")
            elif command == "AUTHENTICATE":
                if auth is not None:
                    await conn.send(f"{tag} {INVALID_STATE}")
                else:
                    auth = await self._authenticate(conn, tag, args)
            elif command in MAILBOX_COMMANDS:
                if auth is None:
                    await conn.send(f"{tag} {INVALID_STATE}")
                elif auth.outcome in FALSE_SUCCESS or auth.mailbox is None:
                    await conn.send(f"{tag} {NOT_CONNECTED}", BYE_NOT_CONNECTED)
                    return
                else:
                    opened = await self._mailbox_command(conn, tag, command, args, auth.mailbox)
                    if opened:
                        selected, read_only = True, command == "EXAMINE"
            elif command in ("FETCH", "STORE"):
                if not selected or auth is None or auth.mailbox is None:
                    await conn.send(f"{tag} {INVALID_STATE}")
                else:
                    await conn.send(*message_command(tag, command, args, auth.mailbox, read_only))
            elif command in ("UNSELECT", "CLOSE"):
                await conn.send(f"{tag} OK {command} completed." if selected else f"{tag} {INVALID_STATE}")
                selected = False
            else:
                await conn.send(f"{tag} {COMMAND_ERROR}")

    async def _authenticate(self, conn: Connection, tag: str, args: str) -> AuthResult | None:
        """AUTHENTICATE <mech> [initial-response]; returns the result when the server said OK."""
        mechanism, _, response = args.partition(" ")
        mechanism, response = mechanism.upper(), response.strip()
        if mechanism not in ("XOAUTH2", "PLAIN") or (mechanism == "XOAUTH2" and self.fault.no_xoauth2):
            await conn.send(f"{tag} {AUTH_FAILED}")
            return None
        if not response:
            await conn.send("+ ")
            response = (await conn.readline()).strip()
            if response == "*":
                await conn.send(f"{tag} BAD AUTHENTICATE aborted.")
                return None
        if mechanism == "PLAIN":  # basic authentication is disabled in Exchange Online
            self.state.count(self.protocol, "", "basic_auth")
            await conn.send(f"{tag} {AUTH_FAILED}")
            return None
        result = authorize(self.state, self.minter, self.protocol, "" if response == "=" else response)
        if self.fault.auth_reply is not None:
            await conn.send(f"{tag} {fault_reply(self.fault.auth_reply, response, self.fault.echo_secret)}")
            return None
        if result.outcome.ok or result.outcome in FALSE_SUCCESS:
            await conn.send(f"{tag} {AUTH_OK}")
            return result
        if self.fault.challenge_on_failure:
            await conn.send(f"+ {failure_challenge(result.outcome)}")
            await conn.readline()  # the client's (empty) answer to the error challenge
        await conn.send(f"{tag} {AUTH_FAILED}")
        return None

    async def _mailbox_command(
        self, conn: Connection, tag: str, command: str, args: str, mailbox: SimMailbox
    ) -> bool:
        """SELECT/EXAMINE/NAMESPACE/LIST/LSUB/STATUS for a connected mailbox; True if selected."""
        count = max(0, int(mailbox.messages))
        name = _mailbox_name(args)
        if command == "NAMESPACE":
            await conn.send('* NAMESPACE (("" "/")) NIL NIL', f"{tag} OK NAMESPACE completed.")
        elif command in ("LIST", "LSUB"):
            inbox = rf'* {command} (\Marked \HasNoChildren) "/" INBOX'
            await conn.send(inbox, f"{tag} OK {command} completed.")
        elif not name:
            await conn.send(f"{tag} {ARGUMENT_ERROR}")
        elif name.upper() != "INBOX":
            await conn.send(f"{tag} NO Mailbox doesn't exist: {name}")
        elif command == "STATUS":
            await conn.send(
                f"* STATUS INBOX (MESSAGES {count} RECENT 0 UIDNEXT {count + 1} UNSEEN {count})",
                f"{tag} OK STATUS completed.",
            )
        else:
            mode = "READ-WRITE" if command == "SELECT" else "READ-ONLY"
            uidvalidity = zlib.crc32(mailbox.address.lower().encode()) % 100000 + 1
            lines = [
                f"* {count} EXISTS",
                "* 0 RECENT",
                f"* FLAGS {FLAGS}",
                f"* OK [PERMANENTFLAGS {FLAGS}] Permanent flags",
            ]
            if count:
                lines.append("* OK [UNSEEN 1] Is the first unseen message")
            lines += [
                f"* OK [UIDVALIDITY {uidvalidity}] UIDVALIDITY value",
                f"* OK [UIDNEXT {count + 1}] The next unique identifier value",
                f"{tag} OK [{mode}] {command} completed.",
            ]
            await conn.send(*lines)
            return True
        return False
