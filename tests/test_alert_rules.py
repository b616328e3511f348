"""Alert rules, Alertmanager example, runbooks: static checks plus promtool/amtool.

promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager` packages. Without
them these tests skip, except in CI (env CI set to a true value) where a missing tool is a failure:
the rules must never ship untested.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import alerts.generate as gen
from exporter.reasons import CATALOGUE, Reason

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULES = ALERTS / "m365-mail-exporter.rules.yml"
AM_EXAMPLE = ALERTS / "alertmanager.example.yml"
UNIT_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
METRICS_DOC = ROOT / "docs" / "metrics.md"
ALERTS_DOC = ROOT / "docs" / "alerts.md"

EXPECTED_ALERTS = {
    "M365MailboxAuthFailing", "M365TokenRefreshFailing", "M365TokenWrongIdentity", "M365TokenMissingScope",
    "M365ClientSecretExpiringSoon", "M365ClientSecretExpired", "M365TLSCertificateExpiringSoon",
    "M365TLSCertificateInvalid", "M365EndpointUnreachable", "M365MailboxBacklogGrowing", "M365ProbesStale",
    "M365ExporterDown", "M365ConfigReloadFailed", "M365MailboxConsumerStalled",
}
RUNBOOK_BASE = "https://github.com/m365-mail-exporter/m365-mail-exporter/blob/main/docs/runbooks"
TOOL_TIMEOUT = 60


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} not found (Debian: apt-get install prometheus prometheus-alertmanager)"
    if in_ci():
        pytest.fail(f"{msg}; required in CI")
    pytest.skip(msg)


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)


def alerting_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


# ------------------------------------------------------------------------------------- promtool / amtool


def test_promtool_check_rules() -> None:
    p = run(tool("promtool"), "check", "rules", str(RULES))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


@pytest.mark.parametrize("test_file", UNIT_TESTS, ids=[f.name for f in UNIT_TESTS])
def test_promtool_unit_tests(test_file: Path) -> None:
    p = run(tool("promtool"), "test", "rules", test_file.name, cwd=test_file.parent)
    assert p.returncode == 0, p.stdout + p.stderr


def test_amtool_check_config() -> None:
    p = run(tool("amtool"), "check-config", str(AM_EXAMPLE))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "M365MailboxAuthFailing", "severity": "critical", "mailbox": "a@b", "check": "imap"},
         "m365-pager"),
        ({"alertname": "M365ClientSecretExpiringSoon", "severity": "critical", "credential": "x"}, "m365-pager"),
        ({"alertname": "M365ClientSecretExpiringSoon", "severity": "warning", "credential": "x"}, "m365-ticket"),
        ({"alertname": "M365ProbesStale", "severity": "warning"}, "m365-ticket"),
        ({"alertname": "SomethingElse", "severity": "critical"}, "default"),
    ],
)
def test_alertmanager_routes(labels: dict[str, str], receiver: str) -> None:
    p = run(tool("amtool"), "config", "routes", "test", f"--config.file={AM_EXAMPLE}",
            *(f"{k}={v}" for k, v in labels.items()))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == receiver


# ------------------------------------------------------------------------------------- static checks


def test_alertmanager_example_structure() -> None:
    cfg = yaml.safe_load(AM_EXAMPLE.read_text(encoding="utf-8"))
    route = cfg["route"]
    assert route["group_by"] == ["alertname", "mailbox", "check", "credential"]

    def walk(r: dict[str, Any]) -> None:
        assert "match" not in r and "match_re" not in r, "use matchers, not match/match_re"
        for child in r.get("routes", []):
            walk(child)

    walk(route)
    for rule in cfg["inhibit_rules"]:
        assert set(rule) <= {"source_matchers", "target_matchers", "equal"}, rule
    sources = " ".join(" ".join(r["source_matchers"]) for r in cfg["inhibit_rules"])
    assert "M365ExporterDown" in sources and 'severity = "critical"' in sources


def test_rule_file_is_generated_from_config() -> None:
    assert RULES.read_text(encoding="utf-8") == gen.render(gen.load_config()), (
        "alerts/m365-mail-exporter.rules.yml is out of date: run python alerts/generate.py"
    )


def test_generator_overrides_and_validation() -> None:
    text = gen.render(gen.load_config(overrides=gen.parse_set([
        'selector=job="m365-staging"', "alerts.M365MailboxAuthFailing.for=1s",
        "alerts.M365MailboxBacklogGrowing.enabled=false", "extra_labels.team=messaging",
    ])))
    doc = yaml.safe_load(text)
    rules = doc["groups"][0]["rules"]
    auth = next(r for r in rules if r["alert"] == "M365MailboxAuthFailing")
    assert auth["for"] == "1s" and 'job="m365-staging"' in auth["expr"]
    assert auth["labels"]["team"] == "messaging"
    assert not any(r["alert"] == "M365MailboxBacklogGrowing" for r in rules)
    for bad in ({"selector": ""}, {"alerts": {"M365MailboxAuthFailing": {"for": "5 minutes"}}},
                {"alerts": {"M365Typo": {"for": "5m"}}}, {"gap_tolerance": "x"},
                {"alerts": {"M365ClientSecretExpiringSoon": {"critical_days": 40}}}):
        with pytest.raises(gen.ConfigError):
            gen.load_config(overrides=bad)


def test_every_alert_is_present_with_metadata() -> None:
    rules = alerting_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for r in rules:
        name = r["alert"]
        assert re.fullmatch(r"M365[A-Z][A-Za-z0-9]+", name)
        assert r["labels"]["severity"] in ("critical", "warning", "info"), name
        ann = r["annotations"]
        assert ann["summary"] and "{{" not in ann["summary"], f"{name}: summary must be static"
        assert "{{" in ann["description"], f"{name}: description must be templated"
        assert ann["runbook_url"] == f"{RUNBOOK_BASE}/{name}.md", name
        assert (RUNBOOKS / f"{name}.md").is_file(), f"runbook page for {name} missing"
        assert r.get("for"), f"{name}: needs a for: duration"
    two_tier = {r["alert"] for r in rules if r["labels"]["severity"] == "warning"} & {
        r["alert"] for r in rules if r["labels"]["severity"] == "critical"}
    assert two_tier == {"M365ClientSecretExpiringSoon", "M365TLSCertificateExpiringSoon"}


def test_descriptions_name_the_object_and_reason() -> None:
    for r in alerting_rules():
        d = r["annotations"]["description"]
        expr = r["expr"]
        if "m365_probe_failure_info" in expr:
            assert "$labels.mailbox" in d and "$labels.check" in d and "$labels.reason" in d
        if "failure_info" in expr:
            assert "$labels.reason" in d and "reason_url" in r["annotations"], r["alert"]


def test_reason_words_cover_the_catalogue() -> None:
    auth = next(r for r in alerting_rules() if r["alert"] == "M365MailboxAuthFailing")
    d = auth["annotations"]["description"]
    for reason, info in CATALOGUE.items():
        assert f'"{reason.value}"' in d, reason
        assert info.summary in d, reason


def test_rules_use_only_catalogued_metrics() -> None:
    documented = set(re.findall(r"`(m365_[a-z0-9_]+)", METRICS_DOC.read_text(encoding="utf-8")))
    used = set()
    for r in alerting_rules():
        used |= set(re.findall(r"\b(m365_[a-z0-9_]+)\b", r["expr"]))
    assert used, "no m365_ metrics found in the rules?"
    assert used <= documented, f"not in docs/metrics.md: {sorted(used - documented)}"


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for f in UNIT_TESTS:
        doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        for group in doc["tests"]:
            for t in group.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert EXPECTED_ALERTS - fires == set(), "alerts without a firing unit test"
    assert EXPECTED_ALERTS - quiet == set(), "alerts without a quiet unit test"


def headings(page: Path) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^## (.+)$", page.read_text(encoding="utf-8"), re.M)}


def test_every_reason_has_a_runbook_anchor() -> None:
    missing = []
    for reason, info in CATALOGUE.items():
        page = RUNBOOKS / f"{info.runbook}.md"
        if not page.is_file() or reason.value not in headings(page):
            missing.append(f"{info.runbook}.md: ## {reason.value}")
    assert not missing, "missing runbook sections:\n" + "\n".join(missing)


def test_runbook_index_lists_everything() -> None:
    index = (RUNBOOKS / "index.md").read_text(encoding="utf-8")
    for name in EXPECTED_ALERTS:
        assert f"({name}.md)" in index, name
    for reason in Reason:
        assert f"#{reason.value})" in index, reason


def test_runbook_links_resolve() -> None:
    """Relative links between runbook pages point at existing pages and `## ` sections."""
    for page in RUNBOOKS.glob("*.md"):
        for target, anchor in re.findall(r"\]\(([A-Za-z0-9_]+\.md)?#?([a-z0-9_-]*)\)", page.read_text()):
            dest = RUNBOOKS / target if target else page
            assert dest.is_file(), f"{page.name}: link to missing {target}"
            if anchor:
                slugs = {re.sub(r"[^a-z0-9_ -]", "", h.lower()).replace(" ", "-") for h in headings(dest)}
                assert anchor in slugs, f"{page.name}: {target}#{anchor} has no such section"


def test_alerts_doc_covers_every_alert() -> None:
    text = ALERTS_DOC.read_text(encoding="utf-8")
    for name in EXPECTED_ALERTS:
        assert name in text, name
    assert "alerts/config.yml" in text and "generate.py" in text
