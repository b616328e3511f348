"""The reason catalogue: complete, documented, and mapped from every AADSTS code we know."""

from __future__ import annotations

from pathlib import Path

from exporter.reasons import AADSTS_REASONS, CATALOGUE, Reason, classify_aadsts, render_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_every_reason_has_summary_fix_and_runbook() -> None:
    assert set(CATALOGUE) == set(Reason)
    for reason, info in CATALOGUE.items():
        assert info.summary and info.fix.endswith((".", ")")), reason
        assert reason.value.islower() and " " not in reason.value


def test_design_reason_set_is_covered() -> None:
    design = (ROOT.parent / "shared" / "DESIGN.md")
    if not design.exists():
        return
    text = design.read_text()
    section = text.split("## Failure reasons", 1)[1].split("## Alerts", 1)[0]
    import re

    named = set(re.findall(r"`([a-z0-9_]+)`", section))
    named.discard("login")  # "(run `login`)" is prose, not a reason
    assert named <= {r.value for r in Reason}, named - {r.value for r in Reason}


def test_docs_reasons_md_is_generated_from_the_catalogue() -> None:
    assert (ROOT / "docs" / "reasons.md").read_text() == render_markdown(), \
        "regenerate: python -m exporter.reasons > docs/reasons.md"


def test_fix_placeholders_are_filled_for_copy_paste() -> None:
    fix = Reason.SMTP_AUTH_DISABLED.fix_for(mailbox="sales@contoso.com")
    assert "Set-CASMailbox -Identity sales@contoso.com -SmtpClientAuthenticationDisabled $false" in fix
    fix = Reason.GRANT_REVOKED.fix_for(credential="support-delegate")
    assert "m365-mail-exporter login --credential support-delegate" in fix
    assert Reason.SMTP_AUTH_DISABLED.fix_for() == Reason.SMTP_AUTH_DISABLED.fix


def test_classify() -> None:
    assert classify_aadsts("invalid_client", [7000222], 401) is Reason.SECRET_EXPIRED
    assert classify_aadsts(None, None, 429) is Reason.THROTTLED
    assert classify_aadsts(None, None, 503) is Reason.IDP_UNAVAILABLE
    assert classify_aadsts("invalid_grant", [9999999], 400) is Reason.GRANT_REVOKED
    assert classify_aadsts("weird", [1], 400) is Reason.UNKNOWN
    for code, reason in AADSTS_REASONS.items():
        assert classify_aadsts("invalid_request", [code], 400) is reason
