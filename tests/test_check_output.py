"""What `check` (and the other outputs showing fixes) tells an operator (issue 13, "Fixes an operator
can paste"): grouped by root cause, within 80 columns, no template placeholder anywhere, [SKIP]
for stages after a failed one, [WARN] inside the expiry alert window, `--demo` without a config,
a clear message without a config file, and the certificate file's own expiry as a metric.

`check` runs as a real subprocess against the simulator (tests/test_check_cli.py's run_cli).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509

from exporter.commands.check import Causes, Style, render_cause, render_line
from exporter.commands.checklist import SECRET_CRITICAL_DAYS, SECRET_WARNING_DAYS, CheckLine, declared_line
from exporter.config import Config
from exporter.reasons import PLACEHOLDER_TOKENS, Reason
from exporter.simulator.state import TokenFault
from exporter.web import make_app
from tests.simenv import CERT_APP_ID, Env, runtime_for, start_env
from tests.test_check_cli import full_config, run_cli, unwrap, write_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await start_env(tmp_path)
    yield e
    await e.sim.close()


def no_placeholders(text: str) -> None:
    found = [t for t in PLACEHOLDER_TOKENS if t in text]
    assert not found, found


def fits(text: str, width: int = 80) -> None:
    long = [ln for ln in text.splitlines() if len(ln) > width]
    assert not long, long


def three_faults(env: Env) -> None:
    env.files["secret"].write_text("wrong-secret-value-abc")  # app: secret_invalid
    env.state.token_faults[CERT_APP_ID] = TokenFault(aadsts=1000502)  # cert: certificate_expired
    env.state.tenant_smtp_auth_disabled = True  # delegate's SMTP: smtp_auth_disabled


async def test_three_root_causes_are_three_blocks_in_80_columns(env: Env, tmp_path: Path) -> None:
    three_faults(env)
    path = write_config(tmp_path, full_config(env))
    code, out, err = await run_cli("--config.file", str(path))
    assert code == 1, (out, err)
    fits(out)
    no_placeholders(out + err)
    blocks = re.findall(r"^Problem (\d+): (\S+) \((.+)\)$", out, re.M)
    assert sorted((r, scope) for _, r, scope in blocks) == [
        ("certificate_expired", "credential cert"), ("secret_invalid", "credential app"),
        ("smtp_auth_disabled", "credential delegate")], blocks
    assert [n for n, _, _ in blocks] == ["1", "2", "3"]
    rows = [ln for ln in out.splitlines() if ln.startswith("  [")]
    failed = [ln for ln in rows if ln.startswith("  [FAIL]")]
    skipped = [ln for ln in rows if ln.startswith("  [SKIP]")]
    # the two tokens and the delegate's SMTP fail; every mail check behind a failed token is not reached
    assert len(failed) == 3, failed
    # ... and so is the Graph audit, signed with the same wrong secret
    assert len(skipped) == 6 and all("not reached -> problem" in ln for ln in skipped), skipped
    assert any("app (Graph)" in ln for ln in skipped)
    assert all(re.search(r"-> problem [123]$", ln) for ln in failed + skipped)
    text = unwrap(out)
    assert text.count("Invalid client secret provided") == 1  # the AADSTS text once, in its block
    secret_block = unwrap(out.split("Problem 1:", 1)[1].split("Problem 2:", 1)[0])
    assert "affects: token app; sales@contoso.example (imap, pop3, smtp); audit app (Graph)" in secret_block
    assert "fix: " + Reason.SECRET_INVALID.fix_for(credential="app") in secret_block
    assert "3 root causes" in text and "6 not reached" in text

    code, out, _ = await run_cli("--config.file", str(path), "--output", "json")
    doc = json.loads(out)
    assert code == 1 and len(doc["root_causes"]) == 3
    by_reason = {c["reason"]: c for c in doc["root_causes"]}
    assert by_reason["secret_invalid"]["checks"] == [
        {"stage": "token", "target": "app"}, {"stage": "imap", "target": "sales@contoso.example"},
        {"stage": "pop3", "target": "sales@contoso.example"}, {"stage": "smtp", "target": "sales@contoso.example"},
        {"stage": "audit", "target": "app (Graph)"}]
    assert "Invalid client secret provided" in by_reason["secret_invalid"]["detail"]  # JSON keeps it whole
    mail = [c for c in doc["checks"] if c["stage"] == "imap" and c["target"] == "sales@contoso.example"]
    assert mail[0]["skipped"] is True and mail[0]["reason"] == "secret_invalid"
    assert mail[0]["root_cause"] == by_reason["secret_invalid"]["id"]
    no_placeholders(out)


async def test_demo_check_runs_without_a_config_either_way_round(tmp_path: Path) -> None:
    for args in (("check", "--demo"), ("--demo", "check")):
        code, out, err = await run_cli(*args, sub=False)
        assert code == 1, (args, out, err)  # the demo's noreply@ has SMTP AUTH disabled, on purpose
        fits(out)
        no_placeholders(out + err)
        assert "Problem 1: smtp_auth_disabled" in out
        assert "-Identity noreply@contoso.example " in unwrap(out)
        warn = next(ln for ln in out.splitlines() if ln.startswith("  [WARN]"))  # the 21-day secret
        assert "ece-app (Graph)" in warn
        assert re.search(r"warning: expires \d{4}-\d\d-\d\d \(in 2[01] days\)", out)
        assert "ece-cert (certificate file)" in out


async def test_no_config_file_says_what_to_do(tmp_path: Path) -> None:
    code, _, err = await run_cli("--config.file", str(tmp_path / "none.yml"))
    assert code == 2 and "check --demo" in err and "--config.file" in err and "Traceback" not in err
    code, _, err = await run_cli(cwd=tmp_path)  # the default path, absent here
    assert code == 2 and "config/m365-mail-exporter.yml" in err and "check --demo" in err


def test_secret_inside_the_alert_window_warns_with_the_date() -> None:
    now = time.time()
    warn = declared_line("app", now + 21 * 86400)
    assert warn.ok and "(in 21 days)" in warn.warning and "warning" in warn.warning
    crit = declared_line("app", now + 3 * 86400)
    assert crit.ok and "critical" in crit.warning
    calm = declared_line("app", now + (SECRET_WARNING_DAYS + 2) * 86400)
    assert calm.ok and not calm.warning
    assert SECRET_WARNING_DAYS == 30 and SECRET_CRITICAL_DAYS == 7
    alerts = (ROOT / "alerts" / "config.yml").read_text()
    assert re.search(r"M365ClientSecretExpiringSoon:.*\n\s+warning_days: 30\n\s+critical_days: 7", alerts)
    text = render_line(warn, Style(False))
    assert text.startswith("  [WARN] app (declared)") and "[ OK ]" not in text
    fits(text)
    assert warn.to_json()["warning"] == warn.warning and warn.to_json()["ok"] is True


def test_long_texts_wrap_within_80_columns_and_group() -> None:
    aadsts = "AADSTS7000215: " + "Invalid client secret provided. " * 10
    causes = Causes()
    lines = [CheckLine("token", "app", False, Reason.SECRET_INVALID, aadsts, credential="app")] + [
        CheckLine(c, "a-very-long-mailbox-name-for-wrapping@contoso.example", False, Reason.SECRET_INVALID,
                  "not reached", skipped=True, credential="app") for c in ("imap", "pop3", "smtp")]
    rendered = [render_line(x, Style(False), 80, causes.add(x)) for x in lines]
    assert len(causes.ids) == 1
    block = render_cause(causes, 1, Style(False), 80)
    fits("\n".join(rendered) + "\n" + block)
    assert block.count("Invalid client secret") < 10  # cut to a few lines in text; JSON has it all
    assert "fix:" in block and "credential app" in unwrap(block)


async def test_certificate_file_expiry_is_exported_by_thumbprint(env: Env) -> None:
    cfg = env.config()
    rt = await runtime_for(cfg)
    try:
        body = (await rt.renderer.render()).decode()
    finally:
        await rt.stop()
    cert = x509.load_pem_x509_certificate(env.files["cert"].read_bytes())
    from cryptography.hazmat.primitives import hashes

    thumb = cert.fingerprint(hashes.SHA1()).hex().upper()
    m = re.search(rf'^m365_client_secret_expiry_timestamp_seconds\{{credential="cert",key_id="{thumb}"\}} (\S+)$',
                  body, re.M)
    assert m, [ln for ln in body.splitlines() if "secret_expiry" in ln]
    assert float(m.group(1)) == pytest.approx(cert.not_valid_after_utc.timestamp())


async def test_landing_page_and_debug_probe_fill_every_fix(env: Env) -> None:
    env.state.mailboxes["sales@contoso.example"].smtp_auth_disabled = True
    env.state.tenant_smtp_auth_disabled = False
    cfg = Config.model_validate(full_config(env))
    rt = await runtime_for(cfg)
    client = TestClient(TestServer(make_app(rt)))
    await client.start_server()
    try:
        for m in cfg.mailboxes:
            for check in ("token", *m.checks):
                resp = await client.get("/probe", params={"mailbox": m.address, "check": check, "debug": "true"})
                text = await resp.text()
                no_placeholders(text)
        debug = await (await client.get("/probe", params={"mailbox": "sales@contoso.example", "check": "smtp",
                                                          "debug": "true"})).text()
        assert "-Identity sales@contoso.example " in debug
        landing = await (await client.get("/")).text()
        no_placeholders(landing)
        assert "-Identity sales@contoso.example " in landing
    finally:
        await client.close()
        await rt.stop()


def test_docs_show_filled_fixes() -> None:
    for page in ("troubleshooting.md", "setup.md"):
        text = (ROOT / "docs" / page).read_text()
        for block in re.findall(r"```(?:text|json)?\n(.*?)```", text, re.S):
            if "fix" in block:
                no_placeholders(block)


def test_every_fix_filled_has_no_placeholder() -> None:
    for reason in Reason:
        no_placeholders(reason.fix_for(mailbox="m@contoso.example", credential="c", host="h", port=993))
    assert "h:993" in Reason.TIMEOUT.fix_for(host="h", port=993)
    assert "`check`" not in Reason.UNKNOWN.fix and "check`" not in Reason.UNKNOWN.fix


async def test_unreachable_endpoint_is_one_cause_and_its_mail_checks_are_skipped(env: Env) -> None:
    import socket

    from exporter.commands.checklist import run_checks

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw = json.loads(env.config().model_dump_json(exclude_none=True))
    raw["defaults"]["endpoints"]["imap"]["port"] = port  # nothing listens: refused
    lines = await run_checks(Config.model_validate(raw))
    causes = Causes()
    for line in lines:
        causes.add(line)
    assert list(causes.ids) == [("connection_refused", f"endpoint 127.0.0.1:{port}")]
    imap = [x for x in lines if x.stage == "imap"]
    assert len(imap) == 3 and all(x.skipped and x.reason is Reason.CONNECTION_REFUSED for x in imap)
    assert all(x.detail == f"not reached: 127.0.0.1:{port} failed" for x in imap)
    tcp = next(x for x in lines if x.stage == "tcp" and x.target == f"127.0.0.1:{port}")
    assert tcp.failed and f"127.0.0.1:{port}" in (tcp.fix or "")
    assert [x for x in lines if x.failed] == [tcp]
