"""Mailbox detail: one mailbox's checks over time, why they failed, backlog, and its credential's token."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import statetimeline, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from grafana.common import (
    TOKEN_STEPS,
    bottom_legend,
    cell,
    check_variable,
    credential_variable,
    failure_table,
    hidden_legend,
    job_instance_variables,
    link,
    mailbox_variable,
    new_dashboard,
    number_stat,
    organize,
    prop,
    query,
    runbook,
    sel,
    status_mappings,
    status_stat,
    steps,
    with_meaning,
)

UID = "m365-mailbox"

MB = sel("mailbox", "check")
CRED = sel("credential")


def scope_mappings() -> list[dm.ValueMapping]:
    return [
        dm.ValueMap(
            options={
                "0": dm.ValueMappingResult(text="granted", color="green", index=0),
                "1": dm.ValueMappingResult(text="MISSING", color="red", index=1),
            }
        )
    ]


def scope_table() -> table.Panel:
    return (
        table.Panel()
        .with_transformation(organize(["credential", "scope", "Value"], exclude=("Time",)))
        .override_by_name("credential", [prop("displayName", "Credential")])
        .override_by_name("scope", [prop("displayName", "Permission (scope / role)")])
        .override_by_name(
            "Value",
            [prop("displayName", "State"), prop("mappings", scope_mappings()), cell("color-background")],
        )
        .thresholds(steps([(None, "green"), (1, "red")]))
    )


def credential_info_table() -> table.Panel:
    order = ["credential", "tenant_id", "client_id", "flow", "auth"]
    names = ["Credential", "Tenant id", "Client (application) id", "Flow", "Authenticates with"]
    p = table.Panel().with_transformation(organize(order))
    for field, name in zip(order, names, strict=True):
        p = p.override_by_name(field, [prop("displayName", name)])
    return p


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
            credential_variable(
                "Credential of this mailbox: the credential is not a label of mailbox metrics, so "
                "pick the one configured for the mailbox (credentials: in the exporter config)"
            ),
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
        .thresholds(steps([(None, "green"), (1, "red")])),
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
        statetimeline.Panel()
        .mappings(status_mappings())
        .thresholds(steps([(None, "red"), (1, "green")]))
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .fill_opacity(90)
        .legend(hidden_legend()),
        title="Check results",
        unit="bool",
        w=24,
        h=6,
        description="Pass/fail of each check over the selected time range.",
        targets=[query("A", f"min by (check) (m365_probe_success{MB})", "{{check}}")],
    )
    lay.add(
        statetimeline.Panel()
        .mappings([dm.ValueMap(options={"1": dm.ValueMappingResult(text="failing", color="red", index=0)})])
        .thresholds(steps([(None, "red")]))
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .fill_opacity(90)
        .legend(hidden_legend()),
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
        targets=[
            query(
                "A",
                with_meaning(f"max by (check, reason) (m365_probe_failure_info{MB} == 1)"),
                instant=True,
                table_format=True,
            )
        ],
        links=[
            link("Token runbook", runbook("token")),
            link("Mail runbook", runbook("mail")),
            link("Network runbook", runbook("network")),
        ],
    )
    lay.add(
        timeseries.Panel().draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80).legend(bottom_legend()).min(0),
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
        timeseries.Panel().legend(bottom_legend()).min(0),
        title="Probe duration",
        unit="s",
        w=12,
        h=7,
        description="Duration of the last probe of each check (token acquisition, or connect + TLS + "
        "XOAUTH2 + SELECT/STAT for mail).",
        targets=[query("A", f"max by (check) (m365_probe_duration_seconds{MB})", "{{check}}")],
    )
    lay.add(
        timeseries.Panel().legend(bottom_legend()).min(0),
        title="Messages in INBOX (backlog)",
        unit="short",
        w=12,
        h=7,
        description="INBOX message count over time. A steady climb means the consuming application "
        "stopped fetching mail (or cannot authenticate).",
        targets=[query("A", f"max by (mailbox) (m365_mailbox_messages{sel('mailbox')})", "{{mailbox}}")],
    )

    lay.row("Credential: $credential")
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
        links=[link("Token runbook", runbook("token"))],
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
        links=[link("Token runbook", runbook("token"))],
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
    lay.add(
        scope_table(),
        title="Permissions the checks need",
        unit="bool",
        w=8,
        h=7,
        description="Each scope/role this credential's mailbox checks need: granted, or MISSING from the "
        "token (add the API permission and grant admin consent).",
        targets=[
            query(
                "A",
                f"max by (credential, scope) (m365_token_missing_scope{CRED})",
                instant=True,
                table_format=True,
            )
        ],
        links=[link("Token runbook", runbook("token"))],
    )
    lay.add(
        credential_info_table(),
        title="Credential",
        unit="string",
        w=8,
        h=7,
        description="Tenant, application (client) id, OAuth2 flow and how the credential authenticates.",
        targets=[
            query(
                "A",
                f"max by (credential, tenant_id, client_id, flow, auth) (m365_credential_info{CRED})",
                instant=True,
                table_format=True,
            )
        ],
    )
    lay.add(
        failure_table([("credential", "Credential")]),
        title="Token refresh failure and what to do",
        unit="bool",
        w=8,
        h=7,
        description="Why the token refresh fails now, in plain words, with the runbook.",
        targets=[
            query(
                "A",
                with_meaning(f"max by (credential, reason) (m365_token_refresh_failure_info{CRED} == 1)"),
                instant=True,
                table_format=True,
            )
        ],
        links=[link("Token runbook", runbook("token"))],
    )
    lay.add(
        timeseries.Panel().legend(bottom_legend()).min(0),
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
        timeseries.Panel().draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80).legend(bottom_legend()).min(0),
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
