"""The simulated Exchange Online IMAP/POP3/SMTP servers, over real TLS sockets on loopback.

Why these tests: the exporter's probes and failure reasons are only as right as the servers
they are tested against, so every Exchange reply text, the IMAP false success, the POP3
one-line quirk, the SMTP STARTTLS requirement and every server fault is pinned here, using
plain asyncio streams (exact transcripts) and the standard library clients (interoperability).
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import smtplib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.simulator.certs import SimCerts, make_certs
from exporter.simulator.imap import ImapServer
from exporter.simulator.mailserver import MailServer
from exporter.simulator.pop3 import Pop3Server
from exporter.simulator.smtp import SmtpServer
from exporter.simulator.state import DEFAULT_TENANT, SimApp, SimMailbox, SimState, SimUser
from exporter.simulator.tokens import TokenMinter
from exporter.simulator.xoauth2 import Outcome, decode, encode

APP = "aaaaaaaa-0000-4000-8000-000000000001"
OTHER_APP = "aaaaaaaa-0000-4000-8000-000000000002"
PUBLIC_CLIENT = "bbbbbbbb-0000-4000-8000-000000000001"
ALICE = "alice@contoso.example"
SHARED = "support@contoso.example"
DELEGATE = "svc-ece@contoso.example"
NOBODY = "nobody@contoso.example"
SCOPES = [f"https://outlook.office.com/{s}" for s in ("IMAP.AccessAsUser.All", "POP.AccessAsUser.All")]
SCOPES += ["https://outlook.office.com/SMTP.Send", "offline_access"]
ROLES = ["IMAP.AccessAsApp", "POP.AccessAsApp", "SMTP.SendAsApp"]
HOST = "SIM0PR01MB0001.namprd01.prod.outlook.com"
TIMEOUT = 5.0

IMAP_CAPS = (
    "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT "
    "CHILDREN IDLE NAMESPACE LITERAL+"
)
IMAP_NO = "NO AUTHENTICATE failed."
POP_FAIL = "-ERR Authentication failure: unknown user name or bad password."
SMTP_535 = f"535 5.7.3 Authentication unsuccessful [{HOST}]"
NOT_AUTHENTICATED = "530 5.7.57 Client not authenticated to send mail."
SMTP_501_USER = "501 5.5.124 Invalid XOAUTH2 auth data - User address provided is not valid"
EHLO_TAIL = ["250-8BITMIME", "250-BINARYMIME", "250-CHUNKING", "250 SMTPUTF8"]
EHLO_HEAD = [f"250-{HOST} Hello [127.0.0.1]", "250-SIZE 157286400", "250-PIPELINING", "250-DSN"]
EHLO_HEAD.append("250-ENHANCEDSTATUSCODES")


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> SimCerts:
    return make_certs(Path(tmp_path_factory.mktemp("simcerts")))


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter(DEFAULT_TENANT)


@pytest.fixture(scope="module")
def forger() -> TokenMinter:
    """Same tenant, different key: its tokens must be rejected."""
    return TokenMinter(DEFAULT_TENANT)


@pytest.fixture
def state() -> SimState:
    s = SimState()
    s.apps[APP] = SimApp(APP, secret="app-secret")
    s.apps[OTHER_APP] = SimApp(OTHER_APP, secret="other-secret")
    s.users[ALICE] = SimUser(ALICE)
    s.users[DELEGATE] = SimUser(DELEGATE)
    s.mailboxes[ALICE] = SimMailbox(ALICE, messages=3, app_access={APP})
    s.mailboxes[SHARED] = SimMailbox(SHARED, messages=7, full_access={DELEGATE})
    return s


@pytest.fixture
def ctx(certs: SimCerts) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca_file))


Servers = dict[str, tuple[MailServer, int]]


@pytest.fixture
async def servers(state: SimState, minter: TokenMinter, certs: SimCerts) -> AsyncIterator[Servers]:
    started: Servers = {}
    try:
        for name, cls in (("imap", ImapServer), ("pop3", Pop3Server), ("smtp", SmtpServer)):
            server = cls(state, minter, certs)
            started[name] = (server, await server.start("127.0.0.1"))
        yield started
    finally:
        for server, _ in started.values():
            await server.close()


def delegated(minter: TokenMinter, upn: str, scopes: list[str] = SCOPES, lifetime: int = 3600) -> str:
    return minter.mint(minter.delegated_claims(upn, PUBLIC_CLIENT, scopes), lifetime)


def app_token(minter: TokenMinter, client: str = APP, roles: list[str] = ROLES) -> str:
    return minter.mint(minter.app_claims(client, roles, cert=False), 3600)


class Client:
    """A line-oriented test client with timeouts on every read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(
        cls, port: int, ctx: ssl.SSLContext | None = None, host: str = "127.0.0.1", name: str = "localhost"
    ) -> Client:
        conn = asyncio.open_connection(host, port, ssl=ctx, server_hostname=name if ctx else None)
        return cls(*await asyncio.wait_for(conn, TIMEOUT))

    async def line(self) -> str:
        raw = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
        assert raw.endswith(b"\r\n"), raw[:200]
        return raw[:-2].decode()

    async def send(self, text: str) -> None:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()

    async def cmd(self, text: str, lines: int = 1) -> list[str]:
        await self.send(text)
        return [await self.line() for _ in range(lines)]

    async def until(self, prefix: str) -> list[str]:
        """Lines up to and including the first starting with `prefix`."""
        out: list[str] = []
        for _ in range(100):
            out.append(await self.line())
            if out[-1].startswith(prefix):
                return out
        raise AssertionError(out)

    async def closed(self) -> bool:
        """True when the server has closed the connection (EOF or reset)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), TIMEOUT) == b""
        except (OSError, ssl.SSLError):
            return True
        finally:
            self.close()

    async def starttls(self, ctx: ssl.SSLContext, name: str = "localhost") -> None:
        await asyncio.wait_for(self.writer.start_tls(ctx, server_hostname=name), TIMEOUT)

    def close(self) -> None:
        self.writer.transport.abort()


async def smtp_tls(port: int, ctx: ssl.SSLContext) -> Client:
    """An SMTP client after greeting, EHLO, STARTTLS, EHLO."""
    c = await Client.connect(port)
    assert (await c.line()).startswith("220 ")
    await c.send("EHLO probe.example")
    await c.until("250 ")
    assert await c.cmd("STARTTLS") == ["220 2.0.0 SMTP server ready"]
    await c.starttls(ctx)
    await c.send("EHLO probe.example")
    await c.until("250 ")
    return c


# -- SASL decoding --------------------------------------------------------------------------


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_decode_never_raises(data: bytes | str) -> None:
    result = decode(data)
    assert isinstance(result, Outcome) or isinstance(result, tuple)


@given(
    st.text(st.characters(blacklist_characters="\x01", blacklist_categories=["Cs"]), min_size=1, max_size=60),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=200),
)
def test_encode_decode_roundtrip(user: str, token: str) -> None:
    assert decode(encode(user, token)) == (user, token)


def test_decode_rejects_bad_shapes() -> None:
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    assert decode("%%%") is Outcome.BAD_BASE64
    assert decode("") is Outcome.BAD_BASE64
    assert decode(b64("user=a@b\x01auth=Bearer t\x01")) is Outcome.MALFORMED
    assert decode(b64("user=a@b\x01auth=Basic t\x01\x01")) is Outcome.MALFORMED
    assert decode(b64("user=a@b\x01\x01")) is Outcome.MALFORMED
    assert decode(b64("user=a@b\x01user=c@d\x01auth=Bearer t\x01\x01")) is Outcome.MALFORMED


# -- failure cases shared by the three protocols ------------------------------------------------

Case = Callable[[TokenMinter, TokenMinter, SimState], str]


def _graph_token(m: TokenMinter) -> str:
    claims = m.delegated_claims(ALICE, PUBLIC_CLIENT, SCOPES) | {"aud": "https://graph.microsoft.com"}
    return m.mint(claims, 3600)


def _disable_alice(m: TokenMinter, s: SimState) -> str:
    s.users[ALICE].disabled = True
    return encode(ALICE, delegated(m, ALICE))


FAILURES: dict[str, tuple[Case, Outcome]] = {
    "expired": (lambda m, f, s: encode(ALICE, delegated(m, ALICE, lifetime=-60)), Outcome.INVALID_TOKEN),
    "forged": (lambda m, f, s: encode(ALICE, delegated(f, ALICE)), Outcome.INVALID_TOKEN),
    "not_a_jwt": (lambda m, f, s: encode(ALICE, "not-a-jwt"), Outcome.INVALID_TOKEN),
    "bad_base64": (lambda m, f, s: "%%%not-base64%%%", Outcome.BAD_BASE64),
    "malformed": (lambda m, f, s: base64.b64encode(b"user=x\x01\x01").decode(), Outcome.MALFORMED),
    "unknown_user": (lambda m, f, s: encode(NOBODY, delegated(m, ALICE)), Outcome.UNKNOWN_USER),
    "graph_token": (lambda m, f, s: encode(ALICE, _graph_token(m)), Outcome.WRONG_AUDIENCE),
    "missing_scope": (
        lambda m, f, s: encode(ALICE, delegated(m, ALICE, ["offline_access"])),
        Outcome.MISSING_SCOPE,
    ),
    "app_missing_role": (lambda m, f, s: encode(ALICE, app_token(m, roles=[])), Outcome.MISSING_SCOPE),
    "user_disabled": (lambda m, f, s: _disable_alice(m, s), Outcome.USER_DISABLED),
}


def failure_user(case: str) -> str:
    return {"bad_base64": "", "malformed": "", "unknown_user": NOBODY}.get(case, ALICE)


# -- IMAP -----------------------------------------------------------------------------------


async def test_imap_app_sasl_ir_dialogue(servers: Servers, state: SimState, minter, ctx) -> None:
    c = await Client.connect(servers["imap"][1], ctx)
    greeting = await c.line()
    assert greeting.startswith("* OK The Microsoft Exchange IMAP4 service is ready. [")
    assert base64.b64decode(greeting.split("[")[1].rstrip("]")).decode() == HOST
    assert await c.cmd("A0 CAPABILITY", 2) == [IMAP_CAPS, "A0 OK CAPABILITY completed."]
    assert await c.cmd(f"A1 AUTHENTICATE XOAUTH2 {encode(ALICE, app_token(minter))}") == [
        "A1 OK AUTHENTICATE completed."
    ]
    await c.send("A2 SELECT INBOX")
    select = await c.until("A2 ")
    assert select[:2] == ["* 3 EXISTS", "* 0 RECENT"]
    assert any(x.startswith("* OK [UIDVALIDITY ") for x in select)
    assert select[-1] == "A2 OK [READ-WRITE] SELECT completed."
    await c.send('A3 EXAMINE "INBOX"')
    assert (await c.until("A3 "))[-1] == "A3 OK [READ-ONLY] EXAMINE completed."
    assert await c.cmd("A4 NOOP") == ["A4 OK NOOP completed."]
    assert await c.cmd("A5 LOGOUT", 2) == [
        "* BYE Microsoft Exchange Server IMAP4 server signing off.",
        "A5 OK LOGOUT completed.",
    ]
    assert await c.closed()
    assert state.counters[("imap", ALICE, "ok")] == 1


@pytest.mark.parametrize(("user", "identity", "messages"), [(ALICE, ALICE, 3), (SHARED, DELEGATE, 7)])
async def test_imap_delegated_with_imaplib(servers: Servers, minter, ctx, user, identity, messages) -> None:
    """imaplib sends no SASL-IR: the server's `+ ` continuation path; shared mailbox via FullAccess."""
    port = servers["imap"][1]
    sasl = f"user={user}\x01auth=Bearer {delegated(minter, identity)}\x01\x01"

    def run() -> tuple[str, list[bytes]]:
        with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=TIMEOUT) as m:
            assert m.authenticate("XOAUTH2", lambda _challenge: sasl)[0] == "OK"
            return m.select("INBOX")

    assert await asyncio.to_thread(run) == ("OK", [str(messages).encode()])


@pytest.mark.parametrize("case", ["delegate_without_full_access", "app_not_registered", "not_accessible"])
async def test_imap_false_success(servers: Servers, state: SimState, minter, ctx, case: str) -> None:
    """Exchange accepts AUTHENTICATE, then the first mailbox command fails and the server hangs up."""
    if case == "delegate_without_full_access":
        user, token, command, outcome = SHARED, delegated(minter, ALICE), "SELECT INBOX", "no_access"
    elif case == "app_not_registered":
        user, token, command, outcome = ALICE, app_token(minter, OTHER_APP), "NAMESPACE", "no_access"
    else:
        state.mailboxes[ALICE].not_accessible = True
        user, token, command, outcome = ALICE, delegated(minter, ALICE), "EXAMINE INBOX", "not_accessible"
    c = await Client.connect(servers["imap"][1], ctx)
    await c.line()
    assert await c.cmd(f"A1 AUTHENTICATE XOAUTH2 {encode(user, token)}") == ["A1 OK AUTHENTICATE completed."]
    assert await c.cmd(f"A2 {command}", 2) == [
        "A2 BAD User is authenticated but not connected.",
        "* BYE Connection closed. 14",
    ]
    assert await c.closed()
    assert state.counters[("imap", user, outcome)] == 1


@pytest.mark.parametrize("case", [*FAILURES, "imap_disabled"])
async def test_imap_auth_failures(servers: Servers, state: SimState, minter, forger, ctx, case: str) -> None:
    if case == "imap_disabled":
        state.mailboxes[ALICE].imap_enabled = False
        response, outcome = encode(ALICE, delegated(minter, ALICE)), Outcome.PROTOCOL_DISABLED
    else:
        build, outcome = FAILURES[case]
        response = build(minter, forger, state)
    c = await Client.connect(servers["imap"][1], ctx)
    await c.line()
    assert await c.cmd(f"A1 AUTHENTICATE XOAUTH2 {response}") == [f"A1 {IMAP_NO}"]
    assert await c.cmd("A2 SELECT INBOX") == ["A2 BAD Command received in Invalid state."]
    assert state.counters[("imap", failure_user(case), outcome.value)] == 1
    c.close()


async def test_imap_other_commands(servers: Servers, minter, ctx) -> None:
    c = await Client.connect(servers["imap"][1], ctx)
    await c.line()
    assert await c.cmd("A1 LOGIN alice@contoso.example hunter2") == ["A1 NO LOGIN failed."]
    assert await c.cmd("A2 FROBNICATE") == ["A2 BAD Command Error. 10"]
    assert await c.cmd("A3 AUTHENTICATE PLAIN") == ["+ "]
    assert await c.cmd(base64.b64encode(b"\0alice\0pw").decode()) == [f"A3 {IMAP_NO}"]
    assert await c.cmd("A4 AUTHENTICATE XOAUTH2") == ["+ "]
    assert await c.cmd("*") == ["A4 BAD AUTHENTICATE aborted."]
    assert await c.cmd("A5 AUTHENTICATE XOAUTH2") == ["+ "]
    assert await c.cmd(encode(ALICE, delegated(minter, ALICE))) == ["A5 OK AUTHENTICATE completed."]
    assert await c.cmd("A6 AUTHENTICATE XOAUTH2 x") == ["A6 BAD Command received in Invalid state."]
    assert await c.cmd("A7 SELECT Archive") == ["A7 NO Mailbox doesn't exist: Archive"]
    assert await c.cmd("A8 NAMESPACE", 2) == ['* NAMESPACE (("" "/")) NIL NIL', "A8 OK NAMESPACE completed."]
    c.close()


async def test_imap_challenge_on_failure(servers: Servers, state: SimState, ctx) -> None:
    state.server_fault("imap").challenge_on_failure = True
    c = await Client.connect(servers["imap"][1], ctx)
    await c.line()
    (challenge,) = await c.cmd(f"A1 AUTHENTICATE XOAUTH2 {encode(ALICE, 'not-a-jwt')}")
    assert challenge.startswith("+ ")
    assert json.loads(base64.b64decode(challenge[2:]))["status"] == "401"
    assert await c.cmd("") == [f"A1 {IMAP_NO}"]
    c.close()


async def test_imap_no_xoauth2_and_unavailable(servers: Servers, state: SimState, minter, ctx) -> None:
    fault = state.server_fault("imap")
    fault.no_xoauth2 = True
    c = await Client.connect(servers["imap"][1], ctx)
    await c.line()
    assert await c.cmd("A1 CAPABILITY", 2) == [
        IMAP_CAPS.replace(" AUTH=XOAUTH2", ""),
        "A1 OK CAPABILITY completed.",
    ]
    assert await c.cmd(f"A2 AUTHENTICATE XOAUTH2 {encode(ALICE, app_token(minter))}") == [f"A2 {IMAP_NO}"]
    c.close()
    fault.unavailable = True
    c = await Client.connect(servers["imap"][1], ctx)
    assert await c.line() == "* BYE Server Unavailable. 15"
    assert await c.closed()


# -- POP3 -----------------------------------------------------------------------------------


async def test_pop3_app_dialogue(servers: Servers, state: SimState, minter, ctx) -> None:
    c = await Client.connect(servers["pop3"][1], ctx)
    assert (await c.line()).startswith("+OK The Microsoft Exchange POP3 service is ready. [")
    assert await c.cmd("STAT") == ["-ERR Command is not valid in this state."]
    assert await c.cmd("CAPA", 6) == ["+OK", "TOP", "UIDL", "SASL PLAIN XOAUTH2", "USER", "."]
    assert await c.cmd("AUTH XOAUTH2") == ["+ "]
    assert await c.cmd(encode(ALICE, app_token(minter))) == ["+OK User successfully authenticated."]
    assert await c.cmd("STAT") == ["+OK 3 6144"]
    assert await c.cmd("LIST", 5) == ["+OK 3 messages (6144 octets)", "1 2048", "2 2048", "3 2048", "."]
    assert await c.cmd("QUIT") == ["+OK Microsoft Exchange Server POP3 server signing off."]
    assert await c.closed()
    assert state.counters[("pop3", ALICE, "ok")] == 1


async def test_pop3_shared_mailbox_via_full_access(servers: Servers, minter, ctx) -> None:
    c = await Client.connect(servers["pop3"][1], ctx)
    await c.line()
    assert await c.cmd("AUTH XOAUTH2") == ["+ "]
    assert await c.cmd(encode(SHARED, delegated(minter, DELEGATE))) == [
        "+OK User successfully authenticated."
    ]
    assert await c.cmd("STAT") == ["+OK 7 14336"]
    c.close()


@pytest.mark.parametrize("case", [*FAILURES, "pop_disabled", "no_access", "app_not_registered"])
async def test_pop3_auth_failures(servers: Servers, state: SimState, minter, forger, ctx, case: str) -> None:
    user = failure_user(case)
    if case == "pop_disabled":
        state.mailboxes[ALICE].pop_enabled = False
        response, outcome = encode(ALICE, delegated(minter, ALICE)), Outcome.PROTOCOL_DISABLED
    elif case == "no_access":
        user, response, outcome = SHARED, encode(SHARED, delegated(minter, ALICE)), Outcome.NO_ACCESS
    elif case == "app_not_registered":
        response, outcome = encode(ALICE, app_token(minter, OTHER_APP)), Outcome.NO_ACCESS
    else:
        build, outcome = FAILURES[case]
        response = build(minter, forger, state)
    c = await Client.connect(servers["pop3"][1], ctx)
    await c.line()
    assert await c.cmd("AUTH XOAUTH2") == ["+ "]
    assert await c.cmd(response) == [POP_FAIL]
    assert await c.cmd("STAT") == ["-ERR Command is not valid in this state."]
    assert state.counters[("pop3", user, outcome.value)] == 1
    c.close()


async def test_pop3_one_line_form_is_a_protocol_error(servers: Servers, minter, ctx) -> None:
    c = await Client.connect(servers["pop3"][1], ctx)
    await c.line()
    assert await c.cmd(f"AUTH XOAUTH2 {encode(ALICE, app_token(minter))}") == [
        "-ERR Protocol error. Connection is closed. 10"
    ]
    assert await c.closed()


async def test_pop3_basic_auth_challenge_no_xoauth2_unavailable(
    servers: Servers, state: SimState, ctx
) -> None:
    fault = state.server_fault("pop3")
    c = await Client.connect(servers["pop3"][1], ctx)
    await c.line()
    assert await c.cmd("USER alice@contoso.example") == ["+OK"]
    assert await c.cmd("PASS hunter2") == [POP_FAIL]
    fault.challenge_on_failure = True
    assert await c.cmd("AUTH XOAUTH2") == ["+ "]
    (challenge,) = await c.cmd(encode(ALICE, "not-a-jwt"))
    assert challenge.startswith("+ ") and json.loads(base64.b64decode(challenge[2:]))["status"] == "401"
    assert await c.cmd("") == [POP_FAIL]
    fault.no_xoauth2 = True
    assert await c.cmd("CAPA", 6) == ["+OK", "TOP", "UIDL", "SASL PLAIN", "USER", "."]
    c.close()
    fault.unavailable = True
    c = await Client.connect(servers["pop3"][1], ctx)
    assert await c.line() == "-ERR Server Unavailable. 21"
    assert await c.closed()


# -- SMTP -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "token_for"), [(ALICE, "app"), (ALICE, ALICE), (SHARED, DELEGATE)])
async def test_smtp_with_smtplib(servers: Servers, state: SimState, minter, ctx, user, token_for) -> None:
    port = servers["smtp"][1]
    token = app_token(minter) if token_for == "app" else delegated(minter, token_for)
    sasl = f"user={user}\x01auth=Bearer {token}\x01\x01"

    def run() -> tuple[dict[str, str], dict[str, str], tuple[int, bytes], dict]:
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as s:
            s.ehlo("probe.example")
            before = dict(s.esmtp_features)
            s.starttls(context=ctx)
            s.ehlo("probe.example")
            after = dict(s.esmtp_features)
            auth = s.auth("XOAUTH2", lambda challenge=None: sasl, initial_response_ok=True)
            refused = s.sendmail(user, [user], "Subject: canary\r\n\r\nhello\r\n")
            return before, after, auth, refused

    before, after, auth, refused = await asyncio.to_thread(run)
    assert "starttls" in before and "auth" not in before
    assert after["auth"].split() == ["LOGIN", "XOAUTH2"] and "starttls" not in after
    assert auth == (235, b"2.7.0 Authentication successful")
    assert refused == {}
    assert state.counters[("smtp", user, "ok")] == 1
    assert state.counters[("smtp", user, "message_accepted")] == 1
    assert state.mailboxes[user].messages == (3 if user == ALICE else 7)  # no delivery


async def test_smtp_raw_dialogue_requires_starttls(servers: Servers, minter, ctx) -> None:
    c = await Client.connect(servers["smtp"][1])
    greeting = await c.line()
    assert greeting.startswith(f"220 {HOST} Microsoft ESMTP MAIL Service ready at ")
    await c.send("EHLO probe.example")
    assert await c.until("250 ") == [*EHLO_HEAD, "250-STARTTLS", *EHLO_TAIL]
    assert await c.cmd(f"AUTH XOAUTH2 {encode(ALICE, app_token(minter))}") == [
        "504 5.7.4 Unrecognized authentication type"
    ]
    assert await c.cmd("MAIL FROM:<alice@contoso.example>") == [NOT_AUTHENTICATED]
    assert await c.cmd("STARTTLS") == ["220 2.0.0 SMTP server ready"]
    await c.starttls(ctx)
    assert await c.cmd("AUTH XOAUTH2") == ["503 5.5.2 Send hello first"]
    await c.send("EHLO probe.example")
    assert await c.until("250 ") == [*EHLO_HEAD, "250-AUTH LOGIN XOAUTH2", *EHLO_TAIL]
    assert await c.cmd("MAIL FROM:<alice@contoso.example>") == [NOT_AUTHENTICATED]
    assert await c.cmd("AUTH LOGIN") == ["334 VXNlcm5hbWU6"]
    assert await c.cmd(base64.b64encode(ALICE.encode()).decode()) == ["334 UGFzc3dvcmQ6"]
    assert await c.cmd(base64.b64encode(b"hunter2").decode()) == [
        f"535 5.7.139 Authentication unsuccessful, basic authentication is disabled. [{HOST}]"
    ]
    assert await c.cmd("AUTH XOAUTH2") == ["334 "]
    assert await c.cmd(encode(ALICE, app_token(minter))) == ["235 2.7.0 Authentication successful"]
    assert await c.cmd("BOGUS") == ["500 5.3.3 Unrecognized command"]
    assert await c.cmd("QUIT") == ["221 2.0.0 Service closing transmission channel"]
    assert await c.closed()


async def test_smtp_starttls_discards_pipelined_plaintext(servers: Servers, state: SimState, ctx) -> None:
    """RFC 3207: commands sent in plaintext behind STARTTLS must not run inside the TLS session."""
    c = await Client.connect(servers["smtp"][1])
    await c.line()
    await c.send("EHLO probe.example")
    await c.until("250 ")
    await c.send("STARTTLS\r\nEHLO injected.example")  # one write: both lines arrive together
    assert await c.line() == "220 2.0.0 SMTP server ready"
    await c.starttls(ctx)
    assert await c.cmd("AUTH XOAUTH2") == ["503 5.5.2 Send hello first"]
    assert state.counters[("smtp", "", "starttls_pipelined_input_discarded")] == 1
    c.close()


SMTP_POLICIES = {
    "tenant_disabled": (
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. "
        f"Visit https://aka.ms/smtp_auth_disabled for more information. [{HOST}]"
    ),
    "mailbox_disabled": (
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. "
        f"Visit https://aka.ms/smtp_auth_disabled for more information. [{HOST}]"
    ),
    "security_defaults": (
        "535 5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults "
        f"policy. Contact your administrator. [{HOST}]"
    ),
    "conditional_access": (
        "535 5.7.139 Authentication unsuccessful, the request did not meet the criteria to be authenticated "
        f"successfully. Contact your administrator. [{HOST}]"
    ),
}


@pytest.mark.parametrize("case", [*FAILURES, *SMTP_POLICIES, "no_access"])
async def test_smtp_auth_failures(servers: Servers, state: SimState, minter, forger, ctx, case: str) -> None:
    user, response = ALICE, encode(ALICE, delegated(minter, ALICE))
    if case in FAILURES:
        response = FAILURES[case][0](minter, forger, state)
        user = failure_user(case)
        expected = {"bad_base64": "501 5.5.2 Cannot Decode response"}.get(case, SMTP_535)
        if case in ("malformed", "unknown_user"):
            expected = SMTP_501_USER
    elif case == "no_access":
        user, response, expected = SHARED, encode(SHARED, delegated(minter, ALICE)), SMTP_535
    else:
        expected = SMTP_POLICIES[case]
        mailbox = state.mailboxes[ALICE]
        if case == "tenant_disabled":
            state.tenant_smtp_auth_disabled = True
        else:
            setattr(mailbox, "smtp_auth_disabled" if case == "mailbox_disabled" else case, True)
    c = await smtp_tls(servers["smtp"][1], ctx)
    assert await c.cmd(f"AUTH XOAUTH2 {response}") == [expected]
    assert await c.cmd("MAIL FROM:<alice@contoso.example>") == [NOT_AUTHENTICATED]
    assert sum(n for k, n in state.counters.items() if k[:2] == ("smtp", user) and k[2] != "ok") == 1
    c.close()


async def test_smtp_faults_in_dialogue(servers: Servers, state: SimState, minter, ctx) -> None:
    fault = state.server_fault("smtp")
    fault.challenge_on_failure = True
    c = await smtp_tls(servers["smtp"][1], ctx)
    (challenge,) = await c.cmd(f"AUTH XOAUTH2 {encode(ALICE, 'not-a-jwt')}")
    assert challenge.startswith("334 ") and json.loads(base64.b64decode(challenge[4:]))["status"] == "401"
    assert await c.cmd("") == [SMTP_535]
    c.close()

    fault.no_xoauth2 = True
    c = await smtp_tls(servers["smtp"][1], ctx)
    await c.send("EHLO probe.example")
    assert "250-AUTH LOGIN" in await c.until("250 ")
    assert await c.cmd(f"AUTH XOAUTH2 {encode(ALICE, app_token(minter))}") == [
        "504 5.7.4 Unrecognized authentication type"
    ]
    c.close()

    fault.no_starttls = True
    c = await Client.connect(servers["smtp"][1])
    await c.line()
    await c.send("EHLO probe.example")
    assert "250-STARTTLS" not in await c.until("250 ")
    assert await c.cmd("STARTTLS") == ["500 5.3.3 Unrecognized command 'STARTTLS'"]
    c.close()

    fault.unavailable = True
    c = await Client.connect(servers["smtp"][1])
    assert await c.line() == "421 4.3.2 Service not available"
    assert await c.closed()


# -- server faults ----------------------------------------------------------------------------

PROTOCOLS = ["imap", "pop3", "smtp"]
GREETING = {"imap": "* OK The Microsoft", "pop3": "+OK The Microsoft", "smtp": "220 "}


async def connect_for(name: str, port: int, ctx: ssl.SSLContext) -> Client:
    return await Client.connect(port, None if name == "smtp" else ctx)


@pytest.mark.parametrize("name", PROTOCOLS)
async def test_tarpit_does_not_block_close(servers: Servers, state: SimState, name: str) -> None:
    state.server_fault(name).tarpit = True
    server, port = servers[name]
    c = await Client.connect(port)  # plain TCP: a tarpit does not even answer a TLS ClientHello
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(c.reader.read(1), 0.3)
    assert server.connections == 1
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 2.0
    assert await c.closed()


@pytest.mark.parametrize("name", PROTOCOLS)
async def test_drop_mid(servers: Servers, state: SimState, ctx, name: str) -> None:
    state.server_fault(name).drop_mid = True
    c = await connect_for(name, servers[name][1], ctx)
    assert (await c.line()).startswith(GREETING[name])
    assert await c.closed()


@pytest.mark.parametrize("name", PROTOCOLS)
async def test_garbage(servers: Servers, state: SimState, ctx, name: str) -> None:
    state.server_fault(name).garbage = True
    c = await connect_for(name, servers[name][1], ctx)
    data = bytearray()
    for _ in range(10_000):  # bounded: ~1 MiB arrives in chunks
        try:
            chunk = await asyncio.wait_for(c.reader.read(65536), TIMEOUT)
        except (OSError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    c.close()
    assert len(data) > 1 << 20
    with pytest.raises(UnicodeDecodeError):
        bytes(data).decode("utf-8")
    assert b"\n" not in data[-(1 << 20) :]


@pytest.mark.parametrize("name", PROTOCOLS)
async def test_delay(servers: Servers, state: SimState, ctx, name: str) -> None:
    c = await connect_for(name, servers[name][1], ctx)
    await c.line()
    state.server_fault(name).delay = 0.3
    started = time.monotonic()
    await c.send("NOOP" if name != "imap" else "A1 NOOP")
    await c.line()
    assert time.monotonic() - started >= 0.29
    c.close()


@pytest.mark.parametrize("name", PROTOCOLS)
async def test_cert_switching(servers: Servers, state: SimState, ctx, name: str) -> None:
    """The presented certificate follows ServerFault.cert per connection, switchable at runtime."""
    fault, port = state.server_fault(name), servers[name][1]

    async def handshake() -> None:
        if name == "smtp":
            c = await Client.connect(port)
            await c.line()
            assert await c.cmd("STARTTLS") == ["220 2.0.0 SMTP server ready"]
            try:
                await c.starttls(ctx)
            finally:
                c.close()
        else:
            (await Client.connect(port, ctx)).close()

    for which, message in (("expired", "certificate has expired"), ("wrong_host", "mismatch")):
        fault.cert = which
        with pytest.raises(ssl.SSLCertVerificationError) as err:
            await handshake()
        assert message in (err.value.verify_message or "")
    fault.cert = "server"
    await handshake()


async def test_line_limit_idle_timeout_and_command_budget(servers: Servers, ctx) -> None:
    server, port = servers["imap"]
    c = await Client.connect(port, ctx)
    await c.line()
    await c.send("A1 " + "x" * (70 * 1024))
    assert await c.until("* BYE") == ["* BAD Command Error. 10", "* BYE Connection closed. 14"]
    assert await c.closed()

    server.idle_timeout = 0.3
    c = await Client.connect(port, ctx)
    await c.line()
    assert await c.closed()

    server.idle_timeout, server.max_commands = 60.0, 3
    c = await Client.connect(port, ctx)
    await c.line()
    for i in range(3):
        assert await c.cmd(f"A{i} NOOP") == [f"A{i} OK NOOP completed."]
    assert await c.closed()


async def test_ipv6_loopback(state: SimState, minter, certs, ctx) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = ImapServer(state, minter, certs)
    try:
        port = await server.start("::1")
    except OSError:
        pytest.skip("no ::1")
    try:
        c = await Client.connect(port, ctx, host="::1", name="::1")
        assert (await c.line()).startswith("* OK The Microsoft Exchange IMAP4 service is ready.")
        c.close()
    finally:
        await server.close()
