"""Honest reasons (issue 9): each fault seen against real servers gets its own reason and a fix,
over real sockets against the simulator (real MSAL, real TLS).

- `login` when MSAL raises (device-code endpoint 503 text/plain; authority on a closed port);
- POP3 `-ERR [SYS/TEMP]` / IMAP `[UNAVAILABLE]` and the other response codes decide first;
- token endpoint answering 200 text/html; a truncated private key; AADSTS1000502 (expired
  registered certificate); AADSTS50011 maps to redirect_uri_mismatch;
- redaction by value: Postfix's capability line stays readable, echoed fragments of the SASL
  response and of the token's signature do not.
"""

from __future__ import annotations

import asyncio
import base64
import random
import socket
import string
from typing import Any

import pytest

from exporter.commands.login import run_login
from exporter.config import Config
from exporter.reasons import PLACEHOLDER_TOKENS, Reason, classify_aadsts
from exporter.redact import ProbeSecrets, SecretRegistry, redact, register_token
from exporter.runtime import MailTarget
from exporter.simulator.state import ServerFault, TokenFault
from tests.simenv import CERT_APP_ID, PUBLIC_APP_ID, Env, env_fixture, runtime_for

env = env_fixture(delegated_login=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def login(cfg: Config) -> Any:
    return await asyncio.to_thread(run_login, cfg, "delegate", on_flow=lambda _f: None, max_wait=3)


async def test_login_reports_a_503_device_code_endpoint_with_reason_and_fix(env: Env) -> None:
    env.state.token_faults[PUBLIC_APP_ID] = TokenFault(devicecode_status=503)
    result = await login(env.config())
    assert result.exit_code == 1 and result.reason is Reason.IDP_UNAVAILABLE, result.message
    assert "idp_unavailable" in result.message and "fix:" in result.message
    assert "AttributeError" not in result.message and not env.files["cache"].exists()
    assert not [t for t in PLACEHOLDER_TOKENS if t in result.message]


async def test_login_reports_a_closed_authority_port(env: Env) -> None:
    raw = env.config().model_dump(mode="json", exclude_none=True)
    raw["defaults"]["https"]["authority_host"] = f"https://127.0.0.1:{closed_port()}"
    result = await login(Config.model_validate(raw))
    assert result.exit_code == 1 and result.reason is Reason.CONNECTION_REFUSED, result.message
    assert "fix:" in result.message and "127.0.0.1:" in result.message  # the fix names the endpoint


@pytest.mark.parametrize(("check", "reply", "reason"), [
    ("pop3", "-ERR [SYS/TEMP] Temporary authentication failure.", Reason.SERVER_TEMPORARY_FAILURE),
    ("pop3", "-ERR [SYS/PERM] Mail storage unavailable.", Reason.SERVER_UNAVAILABLE),
    ("pop3", "-ERR [IN-USE] Mailbox is locked by another POP3 session.", Reason.MAILBOX_IN_USE),
    ("pop3", "-ERR [AUTH] Authentication failed.", Reason.AUTH_FAILED),
    ("imap", "NO [UNAVAILABLE] Temporary authentication failure.", Reason.SERVER_TEMPORARY_FAILURE),
    ("imap", "NO [AUTHENTICATIONFAILED] Authentication failed.", Reason.AUTH_FAILED),
    ("imap", "NO [AUTHORIZATIONFAILED] Authorization failed.", Reason.MAILBOX_NOT_ACCESSIBLE),
    ("imap", "NO [EXPIRED] Token expired.", Reason.AUTH_FAILED),
    ("imap", "NO [INUSE] Mailbox in use.", Reason.MAILBOX_IN_USE),
    ("imap", "NO [LIMIT] Too many connections.", Reason.MAILBOX_IN_USE),
    ("smtp", "454 4.7.0 Temporary authentication failure", Reason.SERVER_TEMPORARY_FAILURE),
], ids=lambda v: v if isinstance(v, str) and " " not in v else None)
async def test_response_codes_decide_first(env: Env, check: str, reply: str, reason: Reason) -> None:
    env.state.server_faults[check] = ServerFault(auth_reply=reply)
    cfg = env.config([{"address": "sales@contoso.example", "credential": "app", "checks": [check]}])
    rt = await runtime_for(cfg)
    try:
        res = await rt.run_mail_probe(MailTarget(cfg.mailboxes[0], check))
    finally:
        await rt.stop()
    assert not res.success and res.reason is reason, (res.detail, res.transcript.render())


async def token_result(env: Env, name: str, cfg: Config | None = None) -> Any:
    rt = await runtime_for(cfg or env.config())
    try:
        return await rt.run_token_probe(name)
    finally:
        await rt.stop()


async def test_token_endpoint_answering_html_is_not_unknown(env: Env) -> None:
    from tests.simenv import APP_ID

    env.state.token_faults[APP_ID] = TokenFault(html=True)
    res = await token_result(env, "app")
    assert res.reason is Reason.IDP_RESPONSE_INVALID, res.detail
    assert "text/html" in res.detail


async def test_truncated_private_key_has_its_own_reason(env: Env) -> None:
    pem = env.files["key"].read_text().splitlines()
    env.files["key"].write_text("\n".join(pem[: len(pem) // 2]) + "\n")  # cut mid-key, as a bad copy does
    res = await token_result(env, "cert")
    assert res.reason is Reason.PRIVATE_KEY_INVALID, res.detail
    assert "BEGIN" not in res.detail


async def test_expired_registered_certificate_is_certificate_expired(env: Env) -> None:
    env.state.token_faults[CERT_APP_ID] = TokenFault(aadsts=1000502)
    res = await token_result(env, "cert")
    assert res.reason is Reason.CERTIFICATE_EXPIRED, res.detail
    fix = Reason.CERTIFICATE_EXPIRED.fix_for(credential="cert")
    assert "certificate_file" in fix and "client secret" not in fix.lower() and "credential cert" in fix


def test_redirect_uri_mismatch_code() -> None:
    assert classify_aadsts("invalid_request", [50011], 400) is Reason.REDIRECT_URI_MISMATCH
    assert classify_aadsts("invalid_client", [1000502], 401) is Reason.CERTIFICATE_EXPIRED


async def test_transcript_keeps_capabilities_and_hides_echoed_fragments(env: Env) -> None:
    env.state.server_faults["smtp"] = ServerFault(ehlo_auth="AUTH XOAUTH2 OAUTHBEARER",
                                                  auth_reply="535 5.7.8 Error: authentication failed",
                                                  echo_secret=True)
    env.state.server_faults["pop3"] = ServerFault(auth_reply="-ERR [AUTH] Authentication failed.", echo_secret=True)
    cfg = env.config([{"address": "sales@contoso.example", "credential": "app", "checks": ["smtp", "pop3"]}])
    rt = await runtime_for(cfg)
    try:
        smtp = await rt.run_mail_probe(MailTarget(cfg.mailboxes[0], "smtp"))
        pop3 = await rt.run_mail_probe(MailTarget(cfg.mailboxes[0], "pop3"))
        provider = rt.providers["app"]
        token = provider.current.access_token if provider.current else ""
    finally:
        await rt.stop()
    assert token.count(".") == 2
    from exporter.probes.sasl import xoauth2_b64

    sasl = xoauth2_b64("sales@contoso.example", token)
    signature = token.rsplit(".", 1)[1]
    for res in (smtp, pop3):
        text = res.transcript.render() + res.detail
        assert "(saw [REDACTED] sig [REDACTED])" in text, text  # the server did echo, and we hid it
        assert sasl[10:50] not in text and signature[5:45] not in text
        for i in range(0, len(signature) - 16, 7):
            assert signature[i:i + 16] not in text
    assert "S 250-AUTH XOAUTH2 OAUTHBEARER" in smtp.transcript.render()  # a capability, not a credential
    assert smtp.reason is Reason.AUTH_FAILED and pop3.reason is Reason.AUTH_FAILED


def test_registry_scrubs_fragments_not_shorter_pieces() -> None:
    reg = SecretRegistry(fragment=16)
    secret = "Zx9" + "q" * 5 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefgh"
    reg.register(secret)
    assert reg.scrub(f"echo {secret[3:30]} end") == "echo [REDACTED] end"
    assert reg.scrub(f"a {secret[:15]} b") == f"a {secret[:15]} b"  # 15 chars: below the threshold
    assert reg.scrub(f"x{secret}y{secret[20:40]}") == "x[REDACTED]y[REDACTED]"
    short = SecretRegistry()
    short.register("hunter22")
    assert short.scrub("pw hunter22!") == "pw [REDACTED]!"
    bounded = SecretRegistry(max_secrets=2)
    for s in ("a" * 20 + "1", "b" * 20 + "2", "c" * 20 + "3"):
        bounded.register(s)
    assert len(bounded) == 2 and bounded.scrub("a" * 20 + "1") == "a" * 20 + "1"  # the oldest is forgotten


def test_probe_secrets_scrub_exactly_like_the_registry() -> None:
    """ProbeSecrets (a probe's token + SASL response, no index) must hide exactly what
    SecretRegistry hides: every echoed run of >= 16 characters, at any offset, whole or cut,
    repeated, overlapping, next to other text; and never a shorter piece."""
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "-_="
    token = "".join(rng.choice(alphabet) for _ in range(1400))
    sasl = base64.b64encode(f"user=a@b.example\x01auth=Bearer {token}\x01\x01".encode()).decode()
    periodic = "abcdefghi" * 4  # a secret that repeats its own pieces: find() must try every occurrence
    spaced = "correct horse battery staple"  # a secret with spaces: no shortcut on windows with one
    texts = ["", "+OK", "* OK The Microsoft Exchange IMAP4 service is ready.", "pw hunter22 tiny", periodic[3:25]]
    texts += ["y" * p + token[200:216] + "z" * q for p in range(10) for q in range(3)]  # every alignment, at the end
    for _ in range(400):
        parts = []
        for _ in range(rng.randint(1, 4)):
            src = rng.choice([token, sasl, periodic, spaced, "".join(rng.choice(alphabet) for _ in range(60))])
            a = rng.randrange(len(src))
            parts.append(src[a:a + rng.choice([8, 15, 16, 17, 40, 300])])
            parts.append(rng.choice(["", " ", "x", "A1 NO ", token[:15]]))
        texts.append("".join(parts))
    for secrets_ in ([token, sasl, periodic, "hunter22", "tiny"], [token, spaced, "hunter22"]):
        reg = SecretRegistry(fragment=16)
        for s in secrets_:
            reg.register(s)
        few = ProbeSecrets(secrets_, fragment=16)
        for text in texts:
            assert few.scrub(text) == reg.scrub(text), (secrets_[1][:10], text)
    assert few.scrub(f"echo {token[100:116]} end") == "echo [REDACTED] end"
    assert few.scrub("x" + token[100:116]) == "x[REDACTED]"  # found only by the last window
    assert few.scrub(f"echo {token[100:115]} end") == f"echo {token[100:115]} end"  # 15: below the threshold


def test_registered_token_segments_are_redacted_anywhere() -> None:
    token = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ0ZXN0LXVzZXItNDI0MiIsImV4cCI6OTk5OX0." + "S" * 40 + "ig"
    register_token(token)
    sig = token.rsplit(".", 1)[1]
    assert sig not in redact(f"server said {sig[3:30]}")
    assert "250-AUTH XOAUTH2 OAUTHBEARER" == redact("250-AUTH XOAUTH2 OAUTHBEARER")



async def test_background_probe_details_hide_echoed_fragments(env: Env) -> None:
    """Background probes record no transcript and do not scrub each line as it arrives: the
    detail (stored, exported via logs and the status page) is still scrubbed on its way out."""
    from exporter.probes.result import transcripts
    from exporter.probes.sasl import xoauth2_b64

    env.state.server_faults["imap"] = ServerFault(auth_reply="NO [AUTHENTICATIONFAILED] Invalid.", echo_secret=True)
    env.state.server_faults["pop3"] = ServerFault(auth_reply="-ERR [AUTH] Authentication failed.", echo_secret=True)
    env.state.server_faults["smtp"] = ServerFault(auth_reply="535 5.7.8 Error: authentication failed", echo_secret=True)
    cfg = env.config([{"address": "sales@contoso.example", "credential": "app", "checks": ["imap", "pop3", "smtp"]}])
    rt = await runtime_for(cfg)
    try:
        with transcripts(False):
            results = [await rt.run_mail_probe(MailTarget(cfg.mailboxes[0], c)) for c in ("imap", "pop3", "smtp")]
        provider = rt.providers["app"]
        token = provider.current.access_token if provider.current else ""
    finally:
        await rt.stop()
    sasl = xoauth2_b64("sales@contoso.example", token)
    signature = token.rsplit(".", 1)[1]
    for res in results:
        assert res.transcript.lines == []  # nothing recorded
        assert res.reason is Reason.AUTH_FAILED
        assert "[REDACTED]" in res.detail, res.detail  # the server did echo, and we hid it
        for secret in (sasl, signature):
            for i in range(0, len(secret) - 16, 5):
                assert secret[i:i + 16] not in res.detail, res.detail
