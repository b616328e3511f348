"""Config validation: errors name file, line and field; `--config.check` exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config, parse_config, parse_duration

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
defaults:
  interval: 30s
  timeout: 5s
credentials:
  app:
    tenant_id: t
    client_id: c
    client_secret_file: /run/secrets/app
  delegate:
    tenant_id: t
    client_id: c2
    flow: delegated
    account: svc@contoso.example
    token_cache: /var/lib/x/cache.json
mailboxes:
  - address: sales@contoso.example
    credential: app
    checks: [imap, smtp]
  - address: support@contoso.example
    credential: delegate
    checks: [pop3]
    endpoints:
      pop3: {host: pop.example.test, port: 1995}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "cfg.yml")
    return exc.value.problems


def test_good_config_resolves_endpoints_from_cloud_and_overrides() -> None:
    cfg = parse_config(GOOD, "cfg.yml")
    sales, support = cfg.mailboxes
    assert cfg.defaults.interval == 30.0
    imap = cfg.endpoint_for(sales, "imap")
    assert (imap.host, imap.port, imap.starttls) == ("outlook.office365.com", 993, False)
    smtp = cfg.endpoint_for(sales, "smtp")
    assert (smtp.host, smtp.port, smtp.starttls) == ("smtp.office365.com", 587, True)
    pop = cfg.endpoint_for(support, "pop3")
    assert (pop.host, pop.port) == ("pop.example.test", 1995)
    assert cfg.authority_host(cfg.credentials["app"]) == "https://login.microsoftonline.com"


@pytest.mark.parametrize(
    ("cloud", "login", "imap"),
    [
        ("usgov-gcchigh", "https://login.microsoftonline.us", "outlook.office365.us"),
        ("usgov-dod", "https://login.microsoftonline.us", "outlook-dod.office365.us"),
        ("china", "https://login.partner.microsoftonline.cn", "partner.outlook.cn"),
    ],
)
def test_national_clouds(cloud: str, login: str, imap: str) -> None:
    cfg = parse_config(GOOD.replace("  timeout: 5s", f"  timeout: 5s\n  cloud: {cloud}"), "cfg.yml")
    assert cfg.authority_host(cfg.credentials["app"]) == login
    assert cfg.endpoint_for(cfg.mailboxes[0], "imap").host == imap


def test_typo_names_line_and_field() -> None:
    bad = GOOD.replace("    checks: [pop3]", "    chekcs: [pop3]")
    (problem,) = errors_of(bad)
    assert problem.startswith("cfg.yml:21: mailboxes[1].chekcs:")
    assert "unknown field" in problem


def test_bad_duration_and_port_name_their_lines() -> None:
    bad = GOOD.replace("interval: 30s", "interval: soon").replace("port: 1995", "port: 99999")
    problems = errors_of(bad)
    assert any(p.startswith("cfg.yml:2: defaults.interval:") and "invalid duration" in p for p in problems)
    assert any(p.startswith("cfg.yml:23: mailboxes[1].endpoints.pop3.port:") for p in problems)


def test_unknown_credential_reference() -> None:
    (problem,) = errors_of(GOOD.replace("credential: delegate", "credential: nope"))
    assert problem.startswith("cfg.yml:20: mailboxes[1].credential:")
    assert "unknown credential 'nope'" in problem and "app, delegate" in problem


def test_flow_specific_requirements() -> None:
    problems = errors_of(GOOD.replace("    account: svc@contoso.example\n", "").replace(
        "    client_secret_file: /run/secrets/app\n", ""))
    assert any("credentials.app" in p and "client_credentials needs" in p for p in problems)
    assert any("credentials.delegate.flow" in p and "needs account" in p for p in problems)


def test_secret_and_certificate_are_exclusive() -> None:
    bad = GOOD.replace("    client_secret_file: /run/secrets/app\n",
                       "    client_secret_file: /run/secrets/app\n    certificate_file: a.pem\n"
                       "    private_key_file: a.key\n")
    problems = errors_of(bad)
    assert any("either a client secret or a certificate" in p for p in problems)


def test_duplicate_mailbox_and_invalid_yaml() -> None:
    dup = GOOD + "  - address: sales@contoso.example\n    credential: app\n"
    (problem,) = errors_of(dup)
    assert "duplicate mailbox" in problem and problem.startswith("cfg.yml:24:")
    (problem,) = errors_of("defaults:\n  interval: [\n")
    assert problem.startswith("cfg.yml:") and "invalid YAML" in problem


def test_unique_endpoints_cover_mail_login_and_graph_once() -> None:
    from exporter.runtime import Runtime

    cfg = parse_config(GOOD.replace("    client_secret_file: /run/secrets/app",
                                    "    client_secret_file: /run/secrets/app\n    graph_audit: true"), "cfg.yml")
    keys = set(Runtime(cfg).unique_endpoints(cfg))
    assert keys == {
        ("endpoint", "outlook.office365.com", "993"), ("endpoint", "smtp.office365.com", "587"),
        ("endpoint", "pop.example.test", "1995"), ("endpoint", "login.microsoftonline.com", "443"),
        ("endpoint", "graph.microsoft.com", "443"),
    }
    proxied = parse_config(GOOD.replace("  timeout: 5s", "  timeout: 5s\n  https: {proxy: 'http://proxy:3128'}"))
    assert ("endpoint", "login.microsoftonline.com", "443") not in Runtime(proxied).unique_endpoints(proxied)


def test_find_mailbox_by_name_or_case_insensitive_address() -> None:
    cfg = parse_config(GOOD, "cfg.yml")
    assert cfg.find_mailbox("sales@contoso.example") is cfg.mailboxes[0]
    assert cfg.find_mailbox("Support@Contoso.Example") is cfg.mailboxes[1]
    assert cfg.find_mailbox("nobody@contoso.example") is None


def test_dns_resolvers_are_validated() -> None:
    (problem,) = errors_of(GOOD.replace("  timeout: 5s", "  timeout: 5s\n  dns:\n    resolvers: [dns.example.com]"))
    assert problem.startswith("cfg.yml:5: defaults.dns.resolvers:") and "expected an IP address" in problem
    cfg = parse_config(GOOD.replace("  timeout: 5s", "  timeout: 5s\n  dns: {resolvers: ['10.0.0.2', '[::1]:53']}"))
    assert cfg.defaults.dns.resolvers == ["10.0.0.2", "[::1]:53"]


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yml")
    (problem,) = errors_of("- just\n- a list\n")
    assert "expected a mapping" in problem


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m", 300), ("1h", 3600), ("250ms", 0.25), (7, 7)])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_shipped_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "config" / "example.yml")
    assert cfg.mailboxes and cfg.credentials


def test_config_check_exit_codes(tmp_path: Path) -> None:
    secret = tmp_path / "app.secret"
    secret.write_text("s3cr3t\n")
    real = GOOD.replace("/run/secrets/app", str(secret)).replace("/var/lib/x/cache.json", str(tmp_path / "c.json"))
    good = tmp_path / "good.yml"
    good.write_text(real)
    bad = tmp_path / "bad.yml"
    bad.write_text(real.replace("client_id: c2", "client_idd: c2"))
    run = lambda p: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "exporter", "--config.check", "--config.file", str(p)],
        capture_output=True, text=True, timeout=60,
    )
    ok = run(good)
    assert ok.returncode == 0, ok.stderr
    assert "OK (2 mailboxes, 2 credentials)" in ok.stdout
    fail = run(bad)
    assert fail.returncode == 2
    assert f"{bad}:11: credentials.delegate.client_idd: unknown field" in fail.stderr
