"""Mailbox detail: one mailbox's checks over time, why they failed, backlog, and its credential's token."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from grafana.common import (
    CRED,
    FAIL_STEPS,
    TOKEN_STEPS,
    bar_timeseries,
    check_variable,
    credential_info,
    failure_table,
    job_instance_variables,
    line_timeseries,
    link,
    mailbox_credential_variable,
    mailbox_variable,
    missing_scopes,
    new_dashboard,
    number_stat,
    query,
    runbook,
    runbook_link,
    sel,
    state_timeline,
    status_mappings,
    status_stat,
    status_timeline,
    steps,
    table_query,
    token_refresh_failures,
    with_meaning,
)

UID = "m365-mailbox"

MB = sel("mailbox", "check")


def build() -> db.Dashboard:
    lay = new_dashboard(
        UID,
        "M365 mail: mailbox detail",
        "One mailbox: per-check results over time, durations, failure reasons, INBOX backlog, and the token "
        "state of the credential it uses.",
        [
            *job_instance_variables(),
            mailbox_variable(multi=False),
            check_variable(),
            mailbox_credential_variable(),
        ],
    )

    lay.row("Status of $mailbox")
    lay.add(
        status_stat(),
        title="Checks now",
        unit="bool",
        w=8,
        h=5,
        description="Result of the last background probe of each check of this mailbox.",
        targets=[query("A", f"min by (check) (m365_probe_success{MB})", "{{check}}", instant=True)],
        links=[link("Runbooks", runbook("index"))],
    )
    lay.add(
        number_stat([(None, "green"), (900, "orange"), (3600, "red")], name_mode=True),
        title="Since last success",
        unit="dtdurations",
        w=8,
        h=5,
        description="Time since each check last succeeded. No value: it has not succeeded since the "
        "exporter started.",
        targets=[
            query(
                "A",
                f"time() - max by (check) (m365_probe_last_success_timestamp_seconds{MB})",
                "{{check}}",
                instant=True,
            )
        ],
    )
    lay.add(
        number_stat([(None, "blue")]),
        title="Messages in INBOX",
        unit="short",
        w=4,
        h=5,
        description="Messages in the INBOX (IMAP SELECT EXISTS or POP3 STAT). A count that keeps growing "
        "means the mail application stopped consuming.",
        targets=[query("A", f"max by (mailbox) (m365_mailbox_messages{sel('mailbox')})", instant=True)],
    )
    lay.add(
        status_stat()
        .mappings(
            [
                dm.ValueMap(
                    options={
                        "0": dm.ValueMappingResult(text="ON TIME", color="green", index=0),
                        "1": dm.ValueMappingResult(text="OVERDUE", color="red", index=1),
                    }
                )
            ]
        )
        .thresholds(steps(FAIL_STEPS)),
        title="Probe schedule",
        unit="bool",
        w=4,
        h=5,
        description="OVERDUE: no probe finished within 2 intervals + timeout, so the results shown are "
        "stale (scheduler stuck or saturated).",
        targets=[query("A", f"max by (check) (m365_probe_overdue{MB})", "{{check}}", instant=True)],
    )

    lay.row("History")
    lay.add(
        status_timeline(),
        title="Check results",
        unit="bool",
        w=24,
        h=6,
        description="Pass/fail of each check over the selected time range.",
        targets=[query("A", f"min by (check) (m365_probe_success{MB})", "{{check}}")],
    )
    lay.add(
        state_timeline(
            [dm.ValueMap(options={"1": dm.ValueMappingResult(text="failing", color="red", index=0)})],
            [(None, "red")],
        ),
        title="Failure reasons over time",
        unit="bool",
        w=24,
        h=6,
        description="Which reason each failing check had, and when (check: reason). The table below says "
        "what the current reason means.",
        targets=[
            query("A", f"max by (check, reason) (m365_probe_failure_info{MB} == 1)", "{{check}}: {{reason}}")
        ],
    )
    lay.add(
        failure_table([("check", "Check")]),
        title="Current failure and what to do",
        unit="bool",
        w=12,
        h=7,
        description="Failing checks of this mailbox now: reason, plain-words meaning and runbook.",
        targets=[table_query("A", with_meaning(f"max by (check, reason) (m365_probe_failure_info{MB} == 1)"))],
        links=[runbook_link("token"), runbook_link("mail"), runbook_link("network")],
    )
    lay.add(
        bar_timeseries(),
        title="Failed probes by reason",
        unit="short",
        w=12,
        h=7,
        description="Failed probes per check and reason in each interval.",
        targets=[
            query(
                "A",
                f"sum by (check, reason) (increase(m365_probe_failures_total{MB}[$__rate_interval]))",
                "{{check}}: {{reason}}",
            )
        ],
    )
    lay.add(
        line_timeseries(),
        title="Probe duration",
        unit="s",
        w=12,
        h=7,
        description="Duration of the last probe of each check (token acquisition, or connect + TLS + "
        "XOAUTH2 + SELECT/STAT for mail).",
        targets=[query("A", f"max by (check) (m365_probe_duration_seconds{MB})", "{{check}}")],
    )
    lay.add(
        line_timeseries(),
        title="Messages in INBOX (backlog)",
        unit="short",
        w=12,
        h=7,
        description="INBOX message count over time. A steady climb means the consuming application "
        "stopped fetching mail (or cannot authenticate).",
        targets=[query("A", f"max by (mailbox) (m365_mailbox_messages{sel('mailbox')})", "{{mailbox}}")],
    )
    lay.add(
        line_timeseries(),
        title="Oldest message waiting",
        unit="s",
        w=24,
        h=7,
        description="How long the oldest INBOX message has been waiting (IMAP INTERNALDATE after EXAMINE, or "
        "POP3 TOP Date; read-only). It grows by a second per second once the consuming application stops "
        "reading, also for low-volume mailboxes; alert M365MailboxConsumerStalled fires above 1h by default. "
        "No line: INBOX empty.",
        targets=[
            query("A", f"time() - max by (mailbox) (m365_mailbox_oldest_message_timestamp_seconds{sel('mailbox')})",
                  "{{mailbox}}")
        ],
        links=[link("Runbooks (M365MailboxConsumerStalled)", runbook("index"))],
    )

    lay.row("Credential of $mailbox")
    lay.add(
        number_stat(TOKEN_STEPS, name_mode=True).decimals(2),
        title="Access token time left",
        unit="dtdurations",
        w=6,
        h=5,
        description="Time until the current access token expires; the exporter renews it before expiry.",
        targets=[
            query(
                "A",
                f"min by (credential) (m365_token_expiry_timestamp_seconds{CRED}) - time()",
                "{{credential}}",
                instant=True,
            )
        ],
    )
    lay.add(
        status_stat(),
        title="Token refresh",
        unit="bool",
        w=6,
        h=5,
        description="Last forced token refresh (including identity and scope checks) succeeded.",
        targets=[
            query(
                "A", f"min by (credential) (m365_token_refresh_success{CRED})", "{{credential}}", instant=True
            )
        ],
        links=[runbook_link("token")],
    )
    lay.add(
        status_stat().mappings(status_mappings("MATCHES", "WRONG IDENTITY")),
        title="Token identity",
        unit="bool",
        w=6,
        h=5,
        description="Delegated: the token is for the configured account. App-only: its appid is the "
        "configured client_id. WRONG IDENTITY: re-run `login` as the right account.",
        targets=[
            query(
                "A", f"min by (credential) (m365_token_identity_match{CRED})", "{{credential}}", instant=True
            )
        ],
        links=[runbook_link("token")],
    )
    lay.add(
        number_stat([(None, "blue")], name_mode=True).decimals(2),
        title="Since last token refresh",
        unit="dtdurations",
        w=6,
        h=5,
        description="Time since a token was last obtained from the Microsoft identity platform.",
        targets=[
            query(
                "A",
                f"time() - max by (credential) (m365_token_last_refresh_timestamp_seconds{CRED})",
                "{{credential}}",
                instant=True,
            )
        ],
    )
    lay.place(
        missing_scopes(),
        title="Permissions the checks need",
        w=8,
        h=7,
        description="Each scope/role this credential's mailbox checks need: granted, or MISSING from the "
        "token (add the API permission and grant admin consent).",
    )
    lay.place(
        credential_info(),
        title="Credential",
        w=8,
        h=7,
        description="Tenant, application (client) id, OAuth2 flow and how the credential authenticates.",
    )
    lay.place(
        token_refresh_failures(),
        title="Token refresh failure and what to do",
        w=8,
        h=7,
        description="Why the token refresh fails now, in plain words, with the runbook.",
    )
    lay.add(
        line_timeseries(),
        title="Token refresh duration",
        unit="s",
        w=12,
        h=6,
        description="Duration of the last token refresh against the identity platform.",
        targets=[
            query("A", f"max by (credential) (m365_token_refresh_duration_seconds{CRED})", "{{credential}}")
        ],
    )
    lay.add(
        bar_timeseries(),
        title="Token requests sent",
        unit="short",
        w=12,
        h=6,
        description="Requests this exporter sent to the token endpoint per interval: one per credential "
        "per refresh, however many mailboxes share it.",
        targets=[
            query(
                "A",
                f"sum by (credential) (increase(m365_token_requests_total{CRED}[$__rate_interval]))",
                "{{credential}}",
            )
        ],
    )
    return lay.dashboard
