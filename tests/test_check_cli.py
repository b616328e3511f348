"""`m365-mail-exporter check` against the simulator: exit codes, JSON schema, text output.

The command runs as a real subprocess (asyncio's, so the simulator keeps serving from this test's
event loop) against a config file pointing at the simulator: healthy tenant -> exit 0; one mailbox
with SMTP AUTH disabled -> exit 1 and the text names the reason and the fix; a broken config ->
exit 2 with file:line. Piped output carries no ANSI escapes. Finer points (ordering, --mailbox,
skipped stages, the audit line's advice, colour rules) run in-process.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.commands.check import Style, render_line, run_check, use_colour
from exporter.commands.checklist import STAGES, CheckLine, endpoint_lines, run_checks
from exporter.config import Config, Endpoint, TLSSettings
from exporter.probes.result import ProbeResult
from exporter.reasons import Reason
from tests.simenv import APP_ID, SECRET, Env, start_env

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[")
KEYS = {"stage", "target", "ok", "reason", "summary", "fix", "detail", "duration_seconds", "facts", "skipped",
        "warning", "root_cause"}


def unwrap(text: str) -> str:
    """The text output with wrapping undone (words joined by single spaces)."""
    return " ".join(text.split())


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await start_env(tmp_path)
    yield e
    await e.sim.close()


def full_config(env: Env) -> dict[str, Any]:
    raw = json.loads(env.config().model_dump_json(exclude_none=True))
    raw["defaults"]["https"]["graph_url"] = env.sim.graph_url
    raw["credentials"]["app"]["graph_audit"] = True
    raw["credentials"]["cert"]["secret_expiry"] = "2030-01-01T00:00:00Z"
    return raw


def write_config(tmp: Path, raw: dict[str, Any]) -> Path:
    path = tmp / "check-config.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


async def run_cli(*args: str, sub: bool = True, cwd: Path | None = None) -> tuple[int, str, str]:
    """`m365-mail-exporter check ARGS` (or, with sub=False, `m365-mail-exporter ARGS`) as a subprocess."""
    import asyncio

    environ = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}  # piping alone must turn colour off
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", *(("check",) if sub else ()), *args, cwd=cwd or ROOT,
        env={**environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def stage_order_ok(stages: list[str]) -> bool:
    idx = [STAGES.index(s) for s in stages]
    return idx == sorted(idx)


async def test_healthy_simulator_exits_0_with_the_json_schema(env: Env, tmp_path: Path) -> None:
    code, out, err = await run_cli("--config.file", str(write_config(tmp_path, full_config(env))), "--output", "json")
    assert code == 0, (out, err)
    doc = json.loads(out)
    assert set(doc) == {"ok", "checks", "root_causes"} and doc["ok"] is True and doc["root_causes"] == []
    checks = doc["checks"]
    assert all(set(c) == KEYS for c in checks)
    assert all(c["ok"] and c["reason"] is None and c["fix"] is None for c in checks), [c for c in checks if not c["ok"]]
    assert all(isinstance(c["duration_seconds"], float | int) and isinstance(c["facts"], dict) for c in checks)
    stages = [c["stage"] for c in checks]
    assert set(stages) == set(STAGES) and stage_order_ok(stages)
    targets = {(c["stage"], c["target"]) for c in checks}
    assert {("token", "app"), ("token", "cert"), ("token", "delegate"), ("imap", "sales@contoso.example"),
            ("pop3", "support@contoso.example"), ("smtp", "billing@contoso.example"), ("audit", "app (Graph)"),
            ("audit", "cert (declared)")} <= targets
    token = next(c for c in checks if c["stage"] == "token" and c["target"] == "delegate")
    assert token["facts"]["identity"] == "svc-ece@contoso.example" and "IMAP.AccessAsUser.All" in token["facts"][
        "permissions"]
    tls = [c for c in checks if c["stage"] == "tls"]
    assert tls and all(c["facts"]["tls_version"].startswith("TLSv1.") for c in tls)
    assert SECRET not in out and "eyJ" not in out  # no secret, no token


async def test_failing_mailbox_exits_1_names_reason_and_fix_without_ansi(env: Env, tmp_path: Path) -> None:
    env.state.mailboxes["billing@contoso.example"].smtp_auth_disabled = True
    code, out, err = await run_cli("--config.file", str(write_config(tmp_path, full_config(env))))
    assert code == 1, (out, err)
    assert not ANSI.search(out) and not ANSI.search(err)
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80, [ln for ln in lines if len(ln) > 80]
    fail = next(i for i, ln in enumerate(lines) if "[FAIL]" in ln)
    assert "billing@contoso.example" in lines[fail] and "smtp_auth_disabled" in lines[fail]
    assert lines[fail].endswith("-> problem 1")
    block = unwrap(out.split("Problem 1:", 1)[1])
    assert Reason.SMTP_AUTH_DISABLED.summary in block and "affects: billing@contoso.example (smtp)" in block
    assert "5.7.139" in block
    fix = Reason.SMTP_AUTH_DISABLED.fix_for(mailbox="billing@contoso.example")
    assert "-Identity billing@contoso.example " in fix  # the command is ready to paste
    assert f"fix: {fix}" in block
    assert sum("[FAIL]" in ln for ln in lines) == 1
    assert "1 of " in unwrap(out) and "checks failed (1 root cause)" in unwrap(out)
    # headings in checklist order
    headings = [ln for ln in lines if ln in ("DNS", "TCP", "TLS", "Token acquisition", "IMAP login", "POP3 login",
                                             "SMTP login", "App registration")]
    assert headings == ["DNS", "TCP", "TLS", "Token acquisition", "IMAP login", "POP3 login", "SMTP login",
                        "App registration"]
    # and in JSON
    code, out, _ = await run_cli("--config.file", str(write_config(tmp_path, full_config(env))), "--output", "json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    failed = [c for c in doc["checks"] if not c["ok"]]
    assert [(c["stage"], c["target"], c["reason"]) for c in failed] == [
        ("smtp", "billing@contoso.example", "smtp_auth_disabled")]
    assert failed[0]["fix"] == Reason.SMTP_AUTH_DISABLED.fix_for(mailbox="billing@contoso.example")
    assert failed[0]["summary"] == Reason.SMTP_AUTH_DISABLED.summary
    assert failed[0]["root_cause"] == 1 and failed[0]["skipped"] is False
    assert [(c["id"], c["reason"], c["checks"]) for c in doc["root_causes"]] == [
        (1, "smtp_auth_disabled", [{"stage": "smtp", "target": "billing@contoso.example"}])]


async def test_bad_config_exits_2_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("defaults:\n  interval: 60s\nmailboxes:\n  - address: a@contoso.example\n    credential: nope\n"
                   "    chekcs: [imap]\n")
    code, out, err = await run_cli("--config.file", str(bad))
    assert code == 2
    assert re.search(r"bad\.yml:6: mailboxes\[0\]\.chekcs: unknown field", err), err
    code, out, err = await run_cli("--config.file", str(bad), "--output", "json")
    doc = json.loads(out)
    assert code == 2 and doc["ok"] is False and doc["checks"] == []
    assert any("bad.yml:" in p for p in doc["config_errors"])
    code, _, err = await run_cli("--config.file", str(tmp_path / "missing.yml"))
    assert code == 2 and "cannot read config" in err


async def test_mailbox_option_limits_to_its_credential_and_endpoints(env: Env) -> None:
    cfg = Config.model_validate(full_config(env))
    lines = await run_checks(cfg, "support@contoso.example")
    assert {ln.target for ln in lines if ln.stage == "token"} == {"delegate"}
    assert {(ln.stage, ln.target) for ln in lines if ln.stage in ("imap", "pop3", "smtp")} == {
        ("imap", "support@contoso.example"), ("pop3", "support@contoso.example"), ("smtp", "support@contoso.example")}
    assert not [ln for ln in lines if ln.stage == "audit"]  # the delegate has no audit configured
    ports = {ln.target.rsplit(":", 1)[1] for ln in lines if ln.stage == "tcp"}
    assert ports == {str(env.sim.imap_port), str(env.sim.pop3_port), str(env.sim.smtp_port), str(env.sim.idp_port)}
    assert all(ln.ok for ln in lines), [ln for ln in lines if not ln.ok]
    out, err = io.StringIO(), io.StringIO()
    assert await run_check(cfg, "nobody@contoso.example", "text", out, err) == 2
    assert "unknown mailbox" in err.getvalue() and "support@contoso.example" in err.getvalue()


async def test_graph_denied_audit_line_explains_the_permission(env: Env) -> None:
    env.state.apps[APP_ID].graph_denied = True
    lines = await run_checks(Config.model_validate(full_config(env)))
    audit = next(ln for ln in lines if ln.stage == "audit" and ln.target == "app (Graph)")
    assert not audit.ok and audit.reason is Reason.CONSENT_REQUIRED
    assert audit.fix is not None and "Application.Read.All" in audit.fix and "secret_expiry" in audit.fix
    assert "Graph" in (audit.summary or "")
    assert [ln for ln in lines if not ln.ok] == [audit]  # everything else still passes
    declared = next(ln for ln in lines if ln.target == "cert (declared)")
    assert declared.ok and "2030-01-01" in declared.detail


async def test_redirect_uri_mismatch_is_a_failing_line(env: Env) -> None:
    raw = full_config(env)
    raw["credentials"]["app"]["app_external_url"] = "https://ece.contoso.example"
    env.state.apps[APP_ID].redirect_uris = ["https://old-ece.contoso.example/callback"]
    lines = await run_checks(Config.model_validate(raw))
    line = next(ln for ln in lines if ln.target == "app (redirect URI)")
    assert not line.ok and line.reason is None and line.fix and "redirect URI" in line.fix
    assert line.to_json()["reason"] is None and line.to_json()["summary"]


async def test_token_failure_shows_on_token_and_mail_lines(env: Env) -> None:
    env.files["secret"].write_text("wrong-secret-value-abc")
    lines = await run_checks(Config.model_validate(full_config(env)), "sales@contoso.example")
    failed = {(ln.stage, ln.reason) for ln in lines if not ln.ok}
    assert ("token", Reason.SECRET_INVALID) in failed
    assert {("imap", Reason.SECRET_INVALID), ("pop3", Reason.SECRET_INVALID), ("smtp", Reason.SECRET_INVALID)} <= failed
    assert env.state.token_requests(APP_ID) <= 3  # token probe + audit's Graph token: not one per mailbox check
    assert "wrong-secret-value-abc" not in json.dumps([ln.to_json() for ln in lines])


def test_unreached_stages_are_skipped_with_the_upstream_reason() -> None:
    ep = Endpoint("missing.test", 993, TLSSettings())
    res = ProbeResult.fail(Reason.DNS_NXDOMAIN, 0.01, "missing.test: name does not exist", dns_success=0.0,
                           dns_duration=0.01)
    dns, tcp, tls = endpoint_lines(ep, res, "imap")
    assert not dns.ok and dns.reason is Reason.DNS_NXDOMAIN and not dns.skipped
    assert tcp.skipped and tls.skipped and tcp.reason is Reason.DNS_NXDOMAIN
    text = render_line(tcp, Style(False))
    assert "[SKIP]" in text and "fix:" not in text
    refused = ProbeResult.fail(Reason.CONNECTION_REFUSED, 0.01, "refused", dns_success=1.0, dns_duration=0.001,
                               dns_addresses=1.0, tcp_success=0.0, tcp_duration=0.001)
    dns, tcp, tls = endpoint_lines(ep, refused)
    assert dns.ok and not tcp.ok and tcp.reason is Reason.CONNECTION_REFUSED and tls.skipped


def test_colour_only_on_a_terminal_without_no_color() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert use_colour(Tty(), {}) is True
    assert use_colour(Tty(), {"NO_COLOR": "1"}) is False
    assert use_colour(Tty(), {"TERM": "dumb"}) is False
    assert use_colour(io.StringIO(), {}) is False
    line = CheckLine("smtp", "m@contoso.example", False, Reason.SMTP_AUTH_DISABLED, "535 5.7.139")
    assert ANSI.search(render_line(line, Style(True)))
    plain = render_line(line, Style(False))
    assert not ANSI.search(plain) and Reason.SMTP_AUTH_DISABLED.fix_for(mailbox="m@contoso.example") in unwrap(plain)
    assert max(map(len, plain.splitlines())) <= 80


async def test_text_on_a_terminal_has_colour_and_progress(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    out, err = Tty(), Tty()
    code = await run_check(Config.model_validate(full_config(env)), "sales@contoso.example", "text", out, err)
    assert code == 0
    assert ANSI.search(out.getvalue()) and "[ OK ]" in out.getvalue()
    assert "checks done" in err.getvalue() and err.getvalue().endswith("\r\x1b[K")  # progress erased at the end
