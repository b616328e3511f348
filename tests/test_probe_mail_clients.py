"""IMAP / POP3 / SMTP probe clients against small scripted servers replaying Exchange Online.

Why scripted servers rather than the simulator: each test pins one exact dialogue (the texts
from domain-facts.md) and asserts both what the probe concluded (Reason, facts) and what it
sent (EXAMINE not SELECT, the SASL string on its own line for POP3, no mail for SMTP). Every
test also checks the token and the base64 SASL string never reach the transcript or detail.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trustme

from exporter.config import Endpoint, TLSSettings
from exporter.probes import lineio
from exporter.probes.imap import probe_imap
from exporter.probes.lineio import LineReader
from exporter.probes.mailconn import classify_exception
from exporter.probes.pop3 import probe_pop3
from exporter.probes.result import ProbeResult
from exporter.probes.sasl import describe_challenge, xoauth2_b64, xoauth2_raw
from exporter.probes.smtp import probe_smtp
from exporter.reasons import Reason

USER = "sales@example.com"
TOKEN = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL291dGxvb2sub2ZmaWNlMzY1LmNvbSJ9"
    ".c2lnbmF0dXJlLW5vdC1yZWFsbHktYS1zZWNyZXQtYnV0LWxvbmctZW5vdWdo"
)
SASL = xoauth2_b64(USER, TOKEN)
ERROR_CHALLENGE = base64.b64encode(
    b'{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/"}').decode()


# --------------------------------------------------------------------------- scripted server


class Expect(NamedTuple):
    pattern: str  # regex the client's next line must fully match


class Sleep(NamedTuple):
    seconds: float


STARTTLS = "starttls"  # server-side TLS upgrade at this point of the script
HANG = "hang"  # stop answering (tarpit)


class ScriptServer:
    """Serves one script per connection: bytes are sent, Expect reads and checks a line."""

    def __init__(self, script: list[Any], *, tls: ssl.SSLContext | None = None,
                 upgrade: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.upgrade = upgrade
        self.received: list[str] = []
        self.errors: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> ScriptServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            for step in self.script:
                if isinstance(step, bytes):
                    writer.write(step)
                    await writer.drain()
                elif isinstance(step, Expect):
                    raw = await asyncio.wait_for(reader.readline(), 5)
                    if not raw:
                        self.errors.append(f"EOF while expecting {step.pattern!r}")
                        return
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    self.received.append(line)
                    if not re.fullmatch(step.pattern, line):
                        self.errors.append(f"got {line[:80]!r}, expected {step.pattern!r}")
                        return
                elif isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                elif step == STARTTLS:
                    await writer.start_tls(self.upgrade)
                elif step == HANG:
                    await asyncio.sleep(30)
        except (ConnectionError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError) as exc:
            self.errors.append(repr(exc))
        finally:
            writer.close()


# --------------------------------------------------------------------------- fixtures


class PKI(NamedTuple):
    ca: trustme.CA
    ca_file: Path
    good: trustme.LeafCert

    def server_ctx(self, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (cert or self.good).configure_cert(ctx)
        return ctx

    def endpoint(self, port: int, *, starttls: bool = False, trusted: bool = True,
                 server_name: str | None = None) -> Endpoint:
        tls = TLSSettings(ca_file=self.ca_file if trusted else None, server_name=server_name)
        return Endpoint(host="127.0.0.1", port=port, tls=tls, starttls=starttls)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("pki") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return PKI(ca, ca_file, ca.issue_cert("127.0.0.1", "localhost"))


def check(result: ProbeResult, reason: Reason | None) -> None:
    """The outcome is `reason` (None: success) and no secret leaked."""
    dump = result.transcript.render()
    assert result.reason is reason, f"{result.reason}: {result.detail}\n{dump}"
    assert result.success is (reason is None)
    for secret in (TOKEN, SASL):
        assert secret not in dump
        assert secret not in result.detail
    assert "[REDACTED" in dump or reason is not None


# --------------------------------------------------------------------------- IMAP

IMAP_GREETING = (b"* OK The Microsoft Exchange IMAP4 service is ready. "
                 b"[TQBOADIAUABSADAANABDAEEAMAAwADEAMgAuAG4AYQBtAHAAcgBkADAANAAuAHAAcgBvAGQA]\r\n")
IMAP_CAPS = (b"IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE "
             b"NAMESPACE LITERAL+")
IMAP_EXAMINE_OK = (b"* 12 EXISTS\r\n* 0 RECENT\r\n"
                   b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $MDNSent)\r\n"
                   b"* OK [PERMANENTFLAGS ()] No permanent flags permitted\r\n"
                   b"* OK [UIDVALIDITY 14] UIDVALIDITY value\r\n"
                   b"* OK [UIDNEXT 1234] The next unique identifier value\r\n"
                   b"A2 OK [READ-ONLY] EXAMINE completed.\r\n")
# the oldest-message step after a non-empty EXAMINE (probes/oldest.py): 1996-07-17 09:44:25 UTC
IMAP_FETCH_OLDEST = [Expect(re.escape("F1 FETCH 1 (INTERNALDATE)")),
                     b'* 1 FETCH (INTERNALDATE "17-Jul-1996 02:44:25 -0700")\r\nF1 OK FETCH completed.\r\n']
IMAP_OLDEST_TS = 837596665.0
IMAP_LOGOUT = [Expect("A3 LOGOUT"),
               b"* BYE Microsoft Exchange Server IMAP4 server signing off.\r\nA3 OK LOGOUT completed.\r\n"]


def imap_script(auth: list[Any], after: list[Any] | None = None, caps: bytes = IMAP_CAPS) -> list[Any]:
    return [IMAP_GREETING, Expect("A0 CAPABILITY"),
            b"* CAPABILITY " + caps + b"\r\nA0 OK CAPABILITY completed.\r\n", *auth, *(after or [])]


IMAP_AUTH_LINE = Expect(re.escape(f"A1 AUTHENTICATE XOAUTH2 {SASL}"))


async def run_imap(pki: PKI, script: list[Any], budget: float = 5) -> tuple[ProbeResult, ScriptServer]:
    async with ScriptServer(script, tls=pki.server_ctx()) as srv:
        result = await probe_imap(pki.endpoint(srv.port), USER, TOKEN, budget)
    return result, srv


async def test_imap_success_examines_inbox_read_only(pki: PKI) -> None:
    script = imap_script([IMAP_AUTH_LINE, b"A1 OK AUTHENTICATE completed.\r\n",
                          Expect("A2 EXAMINE INBOX"), IMAP_EXAMINE_OK, *IMAP_FETCH_OLDEST, *IMAP_LOGOUT])
    result, srv = await run_imap(pki, script)
    check(result, None)
    assert result.facts == {"messages": 12.0, "oldest_message_timestamp": IMAP_OLDEST_TS}
    assert srv.errors == []
    assert not any("SELECT" in line for line in srv.received)
    assert "A1 AUTHENTICATE XOAUTH2 [REDACTED]" in result.transcript.render()
    assert ("C", "A3 LOGOUT") in result.transcript.lines


async def test_imap_without_sasl_ir_answers_continuation(pki: PKI) -> None:
    caps = IMAP_CAPS.replace(b" SASL-IR", b"")
    script = imap_script([Expect("A1 AUTHENTICATE XOAUTH2"), b"+ \r\n", Expect(re.escape(SASL)),
                          b"A1 OK AUTHENTICATE completed.\r\n", Expect("A2 EXAMINE INBOX"), IMAP_EXAMINE_OK,
                          *IMAP_FETCH_OLDEST, *IMAP_LOGOUT], caps=caps)
    result, srv = await run_imap(pki, script)
    check(result, None)
    assert srv.errors == []
    assert ("C", "[REDACTED SASL RESPONSE]") in result.transcript.lines


async def test_imap_authenticate_failed(pki: PKI) -> None:
    script = imap_script([IMAP_AUTH_LINE, b"A1 NO AUTHENTICATE failed.\r\n", *IMAP_LOGOUT])
    result, srv = await run_imap(pki, script)
    check(result, Reason.AUTH_FAILED)
    assert "AUTHENTICATE failed" in result.detail
    assert srv.errors == []  # and LOGOUT was sent politely


async def test_imap_false_success_not_connected(pki: PKI) -> None:
    script = imap_script([IMAP_AUTH_LINE, b"A1 OK AUTHENTICATE completed.\r\n", Expect("A2 EXAMINE INBOX"),
                          b"A2 BAD User is authenticated but not connected.\r\n"
                          b"* BYE Connection closed. 14\r\n"])
    result, _ = await run_imap(pki, script)
    check(result, Reason.MAILBOX_NOT_ACCESSIBLE)
    assert "not connected" in result.detail


async def test_imap_error_challenge_then_no(pki: PKI) -> None:
    script = imap_script([IMAP_AUTH_LINE, f"+ {ERROR_CHALLENGE}\r\n".encode(), Expect(""),
                          b"A1 NO AUTHENTICATE failed.\r\n"])
    result, srv = await run_imap(pki, script)
    check(result, Reason.AUTH_FAILED)
    assert "status=401" in result.detail
    assert srv.errors == []


async def test_imap_invalid_base64_challenge(pki: PKI) -> None:
    script = imap_script([IMAP_AUTH_LINE, b"+ %%%not-base64%%%\r\n", Expect(""),
                          b"A1 NO AUTHENTICATE failed.\r\n"])
    result, _ = await run_imap(pki, script)
    check(result, Reason.AUTH_FAILED)
    assert "not valid base64" in result.detail


@pytest.mark.parametrize(("script", "reason"), [
    ([b"* BYE Server is busy, try again later.\r\n"], Reason.SERVER_UNAVAILABLE),
    ([b"hello there\r\n"], Reason.PROTOCOL_ERROR),
    (imap_script([IMAP_AUTH_LINE, b"A1 BAD Command Argument Error. 11\r\n"]), Reason.PROTOCOL_ERROR),
    (imap_script([IMAP_AUTH_LINE, b"* BYE Connection is closed. 13\r\n"]), Reason.SERVER_UNAVAILABLE),
    (imap_script([IMAP_AUTH_LINE, b"A1 NO [UNAVAILABLE] Try later\r\n"]), Reason.SERVER_TEMPORARY_FAILURE),
    (imap_script([], caps=b"IMAP4rev1 AUTH=PLAIN SASL-IR"), Reason.XOAUTH2_NOT_OFFERED),
    (imap_script([IMAP_AUTH_LINE, b"A1 OK AUTHENTICATE completed.\r\n", Expect("A2 EXAMINE INBOX"),
                  b"A2 NO Mailbox does not exist\r\n"]), Reason.MAILBOX_NOT_ACCESSIBLE),
    (imap_script([IMAP_AUTH_LINE]), Reason.CONNECTION_RESET),  # server hangs up mid-authentication
], ids=["greeting-bye", "greeting-garbage", "auth-bad", "auth-bye", "auth-unavailable", "no-xoauth2",
        "examine-no", "abrupt-close"])
async def test_imap_failures(pki: PKI, script: list[Any], reason: Reason) -> None:
    result, _ = await run_imap(pki, script)
    check(result, reason)


async def test_imap_server_echoing_the_secret_is_scrubbed(pki: PKI) -> None:
    script = imap_script([IMAP_AUTH_LINE, f"A1 NO bad token {TOKEN} in {SASL}\r\n".encode()])
    result, _ = await run_imap(pki, script)
    check(result, Reason.AUTH_FAILED)


async def test_imap_literal_in_untagged_response(pki: PKI) -> None:
    script = imap_script([IMAP_AUTH_LINE, b"A1 OK AUTHENTICATE completed.\r\n", Expect("A2 EXAMINE INBOX"),
                          b"* 3 EXISTS\r\n* OK [ALERT {7}\r\nA2 OK\r\n]\r\nA2 OK EXAMINE completed.\r\n",
                          *IMAP_LOGOUT])
    result, _ = await run_imap(pki, script)
    check(result, None)
    assert result.facts["messages"] == 3.0


# --------------------------------------------------------------------------- POP3

POP_GREETING = b"+OK The Microsoft Exchange POP3 service is ready. [TQBOADIAUABSADAANABD]\r\n"
POP_CAPA = b"+OK\r\nTOP\r\nUIDL\r\nSASL PLAIN XOAUTH2\r\nUSER\r\n.\r\n"
POP_AUTH_OK = b"+OK User successfully authenticated.\r\n"
# the oldest-message step after a non-empty STAT (probes/oldest.py): headers only, folded Date
POP_TOP_OLDEST = [Expect("TOP 1 0"), b"+OK\r\nFrom: a@example.net\r\nDate: Wed, 17 Jul 1996\r\n 02:44:25 -0700\r\n"
                  b"..Odd: dot-stuffed\r\n\r\n.\r\n"]
POP_OLDEST_TS = 837596665.0
POP_QUIT = [Expect("QUIT"), b"+OK Microsoft Exchange Server POP3 server signing off.\r\n"]


def pop_script(after_auth: list[Any], capa: bytes = POP_CAPA) -> list[Any]:
    return [POP_GREETING, Expect("CAPA"), capa, Expect("AUTH XOAUTH2"), b"+ \r\n", Expect(re.escape(SASL)),
            *after_auth]


async def run_pop(pki: PKI, script: list[Any], budget: float = 5) -> tuple[ProbeResult, ScriptServer]:
    async with ScriptServer(script, tls=pki.server_ctx()) as srv:
        result = await probe_pop3(pki.endpoint(srv.port), USER, TOKEN, budget)
    return result, srv


async def test_pop3_success_stat(pki: PKI) -> None:
    script = pop_script([POP_AUTH_OK, Expect("STAT"), b"+OK 7 123456\r\n", *POP_TOP_OLDEST, *POP_QUIT])
    result, srv = await run_pop(pki, script)
    check(result, None)
    assert result.facts == {"messages": 7.0, "oldest_message_timestamp": POP_OLDEST_TS}
    assert srv.errors == []
    assert srv.received[:3] == ["CAPA", "AUTH XOAUTH2", SASL]  # initial response on its own line


async def test_pop3_capa_unsupported_tries_auth_anyway(pki: PKI) -> None:
    script = pop_script([POP_AUTH_OK, Expect("STAT"), b"+OK 0 0\r\n", *POP_QUIT],
                        capa=b"-ERR Unknown command\r\n")
    result, srv = await run_pop(pki, script)
    check(result, None)
    assert result.facts == {"messages": 0.0}
    assert srv.errors == []


async def test_pop3_error_challenge(pki: PKI) -> None:
    script = pop_script([f"+ {ERROR_CHALLENGE}\r\n".encode(), Expect(""),
                         b"-ERR Authentication failure: unknown user name or bad password.\r\n", *POP_QUIT])
    result, srv = await run_pop(pki, script)
    check(result, Reason.AUTH_FAILED)
    assert "status=401" in result.detail
    assert srv.errors == []


@pytest.mark.parametrize(("script", "reason"), [
    (pop_script([b"-ERR Authentication failure: unknown user name or bad password.\r\n", *POP_QUIT]),
     Reason.AUTH_FAILED),
    (pop_script([b"-ERR Protocol error. Connection is closed. 10\r\n"]), Reason.PROTOCOL_ERROR),
    (pop_script([b"-ERR Server Unavailable. 21\r\n"]), Reason.SERVER_UNAVAILABLE),
    (pop_script([b"-ERR Logon failure\r\n"]), Reason.AUTH_FAILED),
    ([b"-ERR Server busy\r\n"], Reason.SERVER_UNAVAILABLE),
    ([POP_GREETING, Expect("CAPA"), b"+OK\r\nTOP\r\nSASL PLAIN\r\nUSER\r\n.\r\n", *POP_QUIT],
     Reason.XOAUTH2_NOT_OFFERED),
    ([POP_GREETING, Expect("CAPA"), POP_CAPA, Expect("AUTH XOAUTH2"),
      b"-ERR Unrecognized authentication type\r\n"],
     Reason.XOAUTH2_NOT_OFFERED),
    (pop_script([POP_AUTH_OK, Expect("STAT"), b"-ERR Mailbox locked\r\n"]),
     Reason.MAILBOX_NOT_ACCESSIBLE),
    (pop_script([POP_AUTH_OK, Expect("STAT"), b"+OK lots\r\n"]),
     Reason.PROTOCOL_ERROR),
], ids=["auth-failure", "protocol-error", "unavailable", "other-err", "greeting-err", "no-xoauth2",
        "mechanism-unknown", "stat-err", "stat-malformed"])
async def test_pop3_failures(pki: PKI, script: list[Any], reason: Reason) -> None:
    result, _ = await run_pop(pki, script)
    check(result, reason)


# --------------------------------------------------------------------------- SMTP

SMTP_GREETING = (b"220 BN0PR04CA0012.outlook.office365.com Microsoft ESMTP MAIL Service ready at "
                 b"Mon, 1 Jan 2024 00:00:00 +0000 [08DC0A1B2C3D4E5F]\r\n")
EHLO_PLAIN = (b"250-BN0PR04CA0012.outlook.office365.com Hello [192.0.2.1]\r\n250-SIZE 157286400\r\n"
              b"250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-8BITMIME\r\n"
              b"250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n")
EHLO_TLS = (b"250-BN0PR04CA0012.outlook.office365.com Hello [192.0.2.1]\r\n250-SIZE 157286400\r\n"
            b"250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH LOGIN XOAUTH2\r\n"
            b"250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n")
SMTP_QUIT = [Expect("QUIT"), b"221 2.0.0 Service closing transmission channel\r\n"]


def smtp_script(auth_reply: list[Any], ehlo_tls: bytes = EHLO_TLS) -> list[Any]:
    return [SMTP_GREETING, Expect("EHLO m365-mail-exporter"), EHLO_PLAIN, Expect("STARTTLS"),
            b"220 2.0.0 SMTP server ready\r\n", STARTTLS, Expect("EHLO m365-mail-exporter"), ehlo_tls,
            Expect(re.escape(f"AUTH XOAUTH2 {SASL}")), *auth_reply]


async def run_smtp(pki: PKI, script: list[Any], budget: float = 5, *, trusted: bool = True,
                   cert: trustme.LeafCert | None = None) -> tuple[ProbeResult, ScriptServer]:
    async with ScriptServer(script, upgrade=pki.server_ctx(cert)) as srv:
        ep = pki.endpoint(srv.port, starttls=True, trusted=trusted)
        result = await probe_smtp(ep, USER, TOKEN, budget)
    return result, srv


async def test_smtp_success_never_sends_mail(pki: PKI) -> None:
    result, srv = await run_smtp(pki, smtp_script([b"235 2.7.0 Authentication successful\r\n", *SMTP_QUIT]))
    check(result, None)
    assert srv.errors == []
    assert srv.received[-1] == "QUIT"
    assert not any(line.upper().startswith(("MAIL", "RCPT", "DATA")) for line in srv.received)
    assert "AUTH XOAUTH2 [REDACTED]" in result.transcript.render()


SMTP_CASES = {
    "tenant-disabled": (b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled "
                        b"for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information. "
                        b"[BN0PR04CA0012.namprd04.prod.outlook.com]", Reason.SMTP_AUTH_DISABLED),
    "mailbox-disabled": (b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled "
                         b"for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information. "
                         b"[HOST]",
                         Reason.SMTP_AUTH_DISABLED),
    "security-defaults": (b"535 5.7.139 Authentication unsuccessful, user is locked by your organization's "
                          b"security defaults policy. Contact your administrator. [HOST]",
                          Reason.SECURITY_DEFAULTS),
    "conditional-access": (b"535 5.7.139 Authentication unsuccessful, the request did not meet the criteria "
                           b"to be authenticated successfully. Contact your administrator. [HOST]",
                           Reason.CONDITIONAL_ACCESS),
    "basic-disabled": (b"535 5.7.139 Authentication unsuccessful, basic authentication is disabled. [HOST]",
                       Reason.AUTH_FAILED),
    "bad-token": (b"535 5.7.3 Authentication unsuccessful [BN0PR04CA0012.namprd04.prod.outlook.com]",
                  Reason.AUTH_FAILED),
    "invalid-user": (b"501 5.5.124 Invalid XOAUTH2 auth data - User address provided is not valid",
                     Reason.INVALID_USER),
    "unavailable": (b"421 4.3.2 Service not available, closing transmission channel",
                    Reason.SERVER_UNAVAILABLE),
    "basic-not-supported": (b"535 5.7.30 Basic authentication is not supported for Client Submission.",
                            Reason.AUTH_FAILED),
    "mechanism-unknown": (b"504 5.7.4 Unrecognized authentication type", Reason.XOAUTH2_NOT_OFFERED),
    "other": (b"550 5.1.1 Something else entirely", Reason.PROTOCOL_ERROR),
}


@pytest.mark.parametrize("case", list(SMTP_CASES))
async def test_smtp_auth_replies(pki: PKI, case: str) -> None:
    reply, reason = SMTP_CASES[case]
    result, _ = await run_smtp(pki, smtp_script([reply + b"\r\n", *SMTP_QUIT]))
    check(result, reason)
    assert reply.decode()[:20] in result.detail


async def test_smtp_334_challenge_gets_empty_line(pki: PKI) -> None:
    script = smtp_script([f"334 {ERROR_CHALLENGE}\r\n".encode(), Expect(""),
                          b"535 5.7.8 Username and Password not accepted.\r\n", *SMTP_QUIT])
    result, srv = await run_smtp(pki, script)
    check(result, Reason.AUTH_FAILED)
    assert "status=401" in result.detail
    assert srv.errors == []


@pytest.mark.parametrize(("script", "reason"), [
    ([b"421 4.3.2 Service not available\r\n"], Reason.SERVER_UNAVAILABLE),
    ([b"220-first line\r\n220-second line\r\n220 ready\r\n", Expect("EHLO m365-mail-exporter"),
      EHLO_PLAIN.replace(b"250-STARTTLS\r\n", b""), *SMTP_QUIT], Reason.STARTTLS_UNAVAILABLE),
    ([SMTP_GREETING, Expect("EHLO m365-mail-exporter"), EHLO_PLAIN, Expect("STARTTLS"),
      b"454 4.7.0 TLS not available due to temporary reason\r\n", *SMTP_QUIT], Reason.STARTTLS_UNAVAILABLE),
    (smtp_script([], ehlo_tls=EHLO_TLS.replace(b"AUTH LOGIN XOAUTH2", b"AUTH LOGIN")),
     Reason.XOAUTH2_NOT_OFFERED),
    ([SMTP_GREETING, Expect("EHLO m365-mail-exporter"), b"250-x\r\n251 mixed codes\r\n"],
     Reason.PROTOCOL_ERROR),
    ([SMTP_GREETING, Expect("EHLO m365-mail-exporter"), EHLO_PLAIN, Expect("STARTTLS"),
      b"220 2.0.0 SMTP server ready\r\n250 injected\r\n"], Reason.PROTOCOL_ERROR),
], ids=["greeting-421", "no-starttls", "starttls-454", "no-xoauth2-after-tls", "mixed-codes",
        "starttls-injection"])
async def test_smtp_failures(pki: PKI, script: list[Any], reason: Reason) -> None:
    result, _ = await run_smtp(pki, script)
    check(result, reason)


async def test_smtp_starttls_untrusted(pki: PKI) -> None:
    result, _ = await run_smtp(pki, smtp_script([]), trusted=False)
    check(result, Reason.TLS_UNTRUSTED)


# --------------------------------------------------------------------------- network / TLS


async def test_connection_refused(pki: PKI) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await probe_imap(pki.endpoint(port), USER, TOKEN, 5)
    check(result, Reason.CONNECTION_REFUSED)


@pytest.mark.parametrize("probe", [probe_imap, probe_pop3])
async def test_tls_untrusted(pki: PKI, probe: Any) -> None:
    async with ScriptServer([IMAP_GREETING], tls=pki.server_ctx()) as srv:
        result = await probe(pki.endpoint(srv.port, trusted=False), USER, TOKEN, 5)
    check(result, Reason.TLS_UNTRUSTED)
    assert "X509 code 20" in result.detail


@pytest.mark.parametrize("server_name", [None, "localhost"])  # IP mismatch (64) / name mismatch (62)
async def test_tls_hostname_mismatch(pki: PKI, server_name: str | None) -> None:
    other = pki.ca.issue_cert("mail.other.example")
    async with ScriptServer([IMAP_GREETING], tls=pki.server_ctx(other)) as srv:
        result = await probe_imap(pki.endpoint(srv.port, server_name=server_name), USER, TOKEN, 5)
    check(result, Reason.TLS_HOSTNAME_MISMATCH)


async def test_tls_cert_expired(pki: PKI) -> None:
    expired = pki.ca.issue_cert("127.0.0.1", "localhost", not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                                not_after=dt.datetime(2020, 6, 1, tzinfo=dt.UTC))
    async with ScriptServer([IMAP_GREETING], tls=pki.server_ctx(expired)) as srv:
        result = await probe_imap(pki.endpoint(srv.port), USER, TOKEN, 5)
    check(result, Reason.TLS_CERT_EXPIRED)


async def test_tls_handshake_failed_on_plaintext_server(pki: PKI) -> None:
    async with ScriptServer([b"* OK plaintext IMAP, not TLS\r\n" * 4, HANG]) as srv:
        result = await probe_imap(pki.endpoint(srv.port), USER, TOKEN, 5)
    check(result, Reason.TLS_HANDSHAKE_FAILED)


@pytest.mark.parametrize(("kind", "probe", "tls"), [
    ("imap-tcp-tarpit", probe_imap, False),  # accepts, never answers the TLS handshake
    ("imap-after-tls", probe_imap, True),  # TLS fine, never sends a greeting
    ("pop3-after-tls", probe_pop3, True),
    ("smtp-no-greeting", probe_smtp, False),
])
async def test_tarpit_times_out_within_timeout(pki: PKI, kind: str, probe: Any, tls: bool) -> None:
    async with ScriptServer([HANG], tls=pki.server_ctx() if tls else None) as srv:
        ep = pki.endpoint(srv.port, starttls=probe is probe_smtp)
        start = time.monotonic()
        result = await probe(ep, USER, TOKEN, 1.0)
        elapsed = time.monotonic() - start
    check(result, Reason.TIMEOUT)
    assert 0.9 <= elapsed < 1.6, elapsed
    assert 0.9 <= result.duration < 1.6


async def test_trickling_server_cannot_extend_the_probe(pki: PKI) -> None:
    # one byte every 50 ms, never a newline: each read succeeds, the whole-probe timeout ends it
    script: list[Any] = [b"* OK still typing"]
    for _ in range(100):
        script += [Sleep(0.05), b"."]
    async with ScriptServer(script, tls=pki.server_ctx()) as srv:
        start = time.monotonic()
        result = await probe_imap(pki.endpoint(srv.port), USER, TOKEN, 1.0)
        elapsed = time.monotonic() - start
    check(result, Reason.TIMEOUT)
    assert elapsed < 1.6


@pytest.mark.parametrize(("error", "reason"), [
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Reason.DNS_NXDOMAIN),
    (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), Reason.DNS_SERVFAIL),
    (socket.gaierror(socket.EAI_FAIL, "Non-recoverable failure in name resolution"), Reason.DNS_SERVFAIL),
    (None, Reason.DNS_TIMEOUT),
])
async def test_dns_failures(pki: PKI, monkeypatch: pytest.MonkeyPatch, error: Exception | None,
                            reason: Reason) -> None:
    async def fake_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        if error is None:
            await asyncio.sleep(10)
        raise error  # type: ignore[misc]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
    ep = Endpoint(host="outlook.office365.invalid", port=993, tls=TLSSettings())
    result = await probe_imap(ep, USER, TOKEN, 0.5)
    check(result, reason)


async def test_unexpected_exception_is_unknown_without_message(pki: PKI,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"leaky {TOKEN}")

    monkeypatch.setattr("exporter.probes.imap.describe_challenge", boom)
    script = imap_script([IMAP_AUTH_LINE, f"+ {ERROR_CHALLENGE}\r\n".encode(), HANG])
    result, _ = await run_imap(pki, script)
    check(result, Reason.UNKNOWN)
    assert "RuntimeError" in result.detail


async def test_cancellation_propagates_and_closes(pki: PKI) -> None:
    async with ScriptServer([HANG], tls=pki.server_ctx()) as srv:
        task = asyncio.create_task(probe_imap(pki.endpoint(srv.port), USER, TOKEN, 30))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------- against the simulator

SIM_APP = "aaaaaaaa-0000-4000-8000-00000000a001"
SIM_BOX = "ece@contoso.example"
SIM_ROLES = ["IMAP.AccessAsApp", "POP.AccessAsApp", "SMTP.SendAsApp"]
PROBES = {"imap": probe_imap, "pop3": probe_pop3, "smtp": probe_smtp}


@pytest.fixture
async def sim() -> Any:
    from exporter.simulator import Simulator
    from exporter.simulator.state import SimApp, SimMailbox, SimState

    state = SimState()
    state.apps[SIM_APP] = SimApp(SIM_APP, secret="sim-secret")
    state.mailboxes[SIM_BOX] = SimMailbox(SIM_BOX, messages=5, app_access={SIM_APP})
    simulator = await Simulator(state).start()
    try:
        yield simulator
    finally:
        await simulator.close()


async def sim_probe(sim: Any, check: str, *, user: str = SIM_BOX, forged: bool = False,
                    budget: float = 5) -> ProbeResult:
    if forged:
        from exporter.simulator.tokens import TokenMinter

        minter = TokenMinter(sim.state.tenant_id)  # right claims, wrong signing key
    else:
        minter = sim.minter
    token = minter.mint(minter.app_claims(SIM_APP, SIM_ROLES, cert=False), 3600)
    port = {"imap": sim.imap_port, "pop3": sim.pop3_port, "smtp": sim.smtp_port}[check]
    ep = Endpoint("127.0.0.1", port, TLSSettings(ca_file=sim.ca_file), starttls=check == "smtp")
    result = await PROBES[check](ep, user, token, budget)
    dump = result.transcript.render() + result.detail
    assert token not in dump and xoauth2_b64(user, token) not in dump
    return result


@pytest.mark.parametrize("check", ["imap", "pop3", "smtp"])
async def test_sim_success(sim: Any, check: str) -> None:
    result = await sim_probe(sim, check)
    assert result.success, (result.reason, result.detail, result.transcript.render())
    if check != "smtp":
        assert result.facts["messages"] == 5.0


@pytest.mark.parametrize(("check", "mailbox_switch", "reason"), [
    ("imap", "not_accessible", Reason.MAILBOX_NOT_ACCESSIBLE),
    ("smtp", "smtp_auth_disabled", Reason.SMTP_AUTH_DISABLED),
    ("smtp", "security_defaults", Reason.SECURITY_DEFAULTS),
    ("smtp", "conditional_access", Reason.CONDITIONAL_ACCESS),
])
async def test_sim_mailbox_faults(sim: Any, check: str, mailbox_switch: str, reason: Reason) -> None:
    setattr(sim.state.mailboxes[SIM_BOX], mailbox_switch, True)
    result = await sim_probe(sim, check)
    assert result.reason is reason, (result.detail, result.transcript.render())


@pytest.mark.parametrize(("check", "kwargs", "fault", "reason"), [
    ("imap", {"forged": True}, {}, Reason.AUTH_FAILED),
    ("pop3", {"forged": True}, {}, Reason.AUTH_FAILED),
    ("smtp", {"forged": True}, {}, Reason.AUTH_FAILED),
    ("imap", {"forged": True}, {"challenge_on_failure": True}, Reason.AUTH_FAILED),
    ("pop3", {"forged": True}, {"challenge_on_failure": True}, Reason.AUTH_FAILED),
    ("smtp", {"forged": True}, {"challenge_on_failure": True}, Reason.AUTH_FAILED),
    ("smtp", {"user": "nobody@contoso.example"}, {}, Reason.INVALID_USER),
    ("imap", {}, {"no_xoauth2": True}, Reason.XOAUTH2_NOT_OFFERED),
    ("pop3", {}, {"no_xoauth2": True}, Reason.XOAUTH2_NOT_OFFERED),
    ("smtp", {}, {"no_xoauth2": True}, Reason.XOAUTH2_NOT_OFFERED),
    ("smtp", {}, {"no_starttls": True}, Reason.STARTTLS_UNAVAILABLE),
    ("imap", {}, {"unavailable": True}, Reason.SERVER_UNAVAILABLE),
    ("pop3", {}, {"unavailable": True}, Reason.SERVER_UNAVAILABLE),
    ("smtp", {}, {"unavailable": True}, Reason.SERVER_UNAVAILABLE),
    ("imap", {}, {"cert": "expired"}, Reason.TLS_CERT_EXPIRED),
    ("smtp", {}, {"cert": "wrong_host"}, Reason.TLS_HOSTNAME_MISMATCH),
    ("pop3", {}, {"drop_mid": True}, Reason.CONNECTION_RESET),
    ("imap", {}, {"garbage": True}, Reason.PROTOCOL_ERROR),
    ("smtp", {}, {"garbage": True}, Reason.PROTOCOL_ERROR),
    ("pop3", {"budget": 0.5}, {"tarpit": True}, Reason.TIMEOUT),
])
async def test_sim_faults(sim: Any, check: str, kwargs: dict[str, Any], fault: dict[str, Any],
                          reason: Reason) -> None:
    server_fault = sim.state.server_fault(check)
    for name, value in fault.items():
        setattr(server_fault, name, value)
    result = await sim_probe(sim, check, **kwargs)
    assert result.reason is reason, (result.detail, result.transcript.render())


async def test_sim_tenant_smtp_auth_disabled(sim: Any) -> None:
    sim.state.tenant_smtp_auth_disabled = True
    result = await sim_probe(sim, "smtp")
    assert result.reason is Reason.SMTP_AUTH_DISABLED
    assert "Tenant" in result.detail


# --------------------------------------------------------------------------- units


def test_xoauth2_wire_format() -> None:
    assert xoauth2_raw("a@b.c", "tok") == b"user=a@b.c\x01auth=Bearer tok\x01\x01"
    assert base64.b64decode(xoauth2_b64("a@b.c", "tok")) == b"user=a@b.c\x01auth=Bearer tok\x01\x01"
    with pytest.raises(ValueError):
        xoauth2_raw("a@b.c\x01", "tok")


@pytest.mark.parametrize(("challenge", "expected"), [
    (ERROR_CHALLENGE, "server error challenge: status=401, schemes=bearer, scope=https://outlook.office365.com/"),
    ("", "empty challenge"),
    ("!!!", "challenge is not valid base64"),
    (base64.b64encode(b"\xff\xfe").decode(), "challenge is not JSON"),
    (base64.b64encode(b"[1,2]").decode(), "challenge is not a JSON object"),
    (base64.b64encode(b'{"status":"<script>\\n evil"}').decode(), "server error challenge: no known fields"),
    ("A" * 5000, "oversized challenge (5000 chars)"),
])
def test_describe_challenge(challenge: str, expected: str) -> None:
    assert describe_challenge(challenge) == expected


def _reader(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    if eof:
        r.feed_eof()
    return r


async def test_lineio_bounds() -> None:
    lr = LineReader(_reader(b"one\r\ntwo\nthree"), read_timeout=1)
    assert await lr.readline() == b"one\r\n"
    assert await lr.readline() == b"two\n"
    with pytest.raises(lineio.ConnectionClosed, match="middle of a line"):
        await lr.readline()
    with pytest.raises(lineio.LineTooLong):
        await LineReader(_reader(b"x" * 20000), read_timeout=1).readline()
    with pytest.raises(lineio.LineTooLong):
        await LineReader(_reader(b"x" * 9000 + b"\r\n"), read_timeout=1).readline()
    with pytest.raises(lineio.BinaryData):
        await LineReader(_reader(b"* OK \x00\x01\r\n"), read_timeout=1).readline()
    lr = LineReader(_reader(b"ok\r\n" * 100_000), read_timeout=1, max_total=4096)
    with pytest.raises(lineio.BudgetExceeded):
        for _ in range(2000):
            await lr.readline()
    with pytest.raises(lineio.LineTimeout):
        await LineReader(_reader(b"", eof=False), read_timeout=0.05).readline()
    assert lineio.decode_line(b"caf\xe9\r\n") == "caf\ufffd"


@pytest.mark.parametrize(("code", "reason"), [
    (10, Reason.TLS_CERT_EXPIRED), (62, Reason.TLS_HOSTNAME_MISMATCH), (64, Reason.TLS_HOSTNAME_MISMATCH),
    (18, Reason.TLS_UNTRUSTED), (19, Reason.TLS_UNTRUSTED), (20, Reason.TLS_UNTRUSTED),
    (21, Reason.TLS_UNTRUSTED), (9, Reason.TLS_UNTRUSTED),
])
def test_classify_verify_codes(code: int, reason: Reason) -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = code
    exc.verify_message = "x"
    assert classify_exception(exc, "tls handshake", 5)[0] is reason


def test_classify_other_exceptions() -> None:
    handshake = classify_exception(ssl.SSLError(1, "sslv3 alert"), "tls handshake", 5)
    assert handshake[0] is Reason.TLS_HANDSHAKE_FAILED
    assert classify_exception(ConnectionRefusedError(), "connect", 5)[0] is Reason.CONNECTION_REFUSED
    assert classify_exception(ConnectionResetError(), "greeting", 5)[0] is Reason.CONNECTION_RESET
    assert classify_exception(TimeoutError(), "resolve", 5)[0] is Reason.DNS_TIMEOUT
    assert classify_exception(TimeoutError(), "greeting", 5)[0] is Reason.TIMEOUT
    assert classify_exception(OSError(113, "No route to host"), "connect", 5)[0] is Reason.CONNECTION_REFUSED
    assert classify_exception(KeyError("secret"), "greeting", 5) == (Reason.UNKNOWN, "unexpected KeyError")
