"""NOC overview: mailbox x check status grid, why checks fail (plain words), expiries, reachability."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import statetimeline, table
from grafana_foundation_sdk.models import common as cm

from grafana.common import (
    DAY,
    EXPIRY_STEPS,
    TOKEN_STEPS,
    cell,
    check_variable,
    failure_table,
    hidden_legend,
    job_instance_variables,
    link,
    mailbox_detail_link,
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
    time_left_bargauge,
    transformation,
    with_meaning,
)

UID = "m365-overview"

SUCCESS = f"min by (mailbox, check) (m365_probe_success{sel('mailbox', 'check')})"


def build() -> db.Dashboard:
    lay = new_dashboard(
        UID,
        "M365 mail: overview",
        "NOC view of m365-mail-exporter: is every mailbox check passing, why not (in plain words), what "
        "expires next, and can this host reach the Microsoft 365 endpoints.",
        [*job_instance_variables(), mailbox_variable(), check_variable()],
    )

    lay.row("Right now")
    lay.add(
        number_stat([(None, "green"), (1, "red")]),
        title="Failing checks",
        unit="short",
        w=4,
        h=5,
        description="Mailbox checks (token, imap, pop3, smtp) whose last probe failed. 0 is good.",
        targets=[query("A", f"count({SUCCESS} == 0) or vector(0)", instant=True)],
    )
    lay.add(
        number_stat([(None, "green"), (1, "red")]),
        title="Failing endpoints",
        unit="short",
        w=4,
        h=5,
        description="Endpoints (host:port) whose DNS, TCP or TLS check currently fails. 0 is good.",
        targets=[
            query(
                "A",
                f"count(max by (host, port) (m365_endpoint_failure_info{sel()} == 1)) or vector(0)",
                instant=True,
            )
        ],
        links=[link("Network runbook", runbook("network"))],
    )
    lay.add(
        number_stat([(None, "green"), (1, "orange")]),
        title="Overdue probes",
        unit="short",
        w=4,
        h=5,
        description="Checks with no finished probe within 2 intervals + timeout: the scheduler is stuck or "
        "saturated, so the other panels show stale results.",
        targets=[query("A", f"sum(m365_probe_overdue{sel('mailbox', 'check')}) or vector(0)", instant=True)],
    )
    lay.add(
        status_stat(name_mode=False).mappings(status_mappings("UP", "DOWN")),
        title="Exporter scraped",
        unit="bool",
        w=4,
        h=5,
        description="Prometheus can scrape the exporter (up). DOWN means every other panel is stale.",
        targets=[query("A", f"min(up{sel()})", instant=True)],
    )
    lay.add(
        status_stat(name_mode=False).mappings(status_mappings("OK", "FAILED")),
        title="Last config reload",
        unit="bool",
        w=4,
        h=5,
        description="FAILED: the last configuration reload was rejected and the previous configuration "
        "keeps running. See the exporter log.",
        targets=[query("A", f"min(m365_config_last_reload_successful{sel()})", instant=True)],
    )
    lay.add(
        number_stat([(None, "blue")]),
        title="Mailboxes monitored",
        unit="short",
        w=4,
        h=5,
        description="Mailboxes configured in the exporter.",
        targets=[query("A", f"max(m365_mailboxes{sel()})", instant=True)],
    )

    lay.row("Mailbox x check status")
    lay.add(
        status_stat().data_links(
            [
                db.DashboardLink("Mailbox detail: ${__field.labels.mailbox}").url(
                    "/d/m365-mailbox?var-mailbox=${__field.labels.mailbox}"
                    "&${datasource:queryparam}&${job:queryparam}&${instance:queryparam}&${__url_time_range}"
                )
            ]
        ),
        title="Mailbox checks",
        unit="bool",
        w=24,
        h=9,
        description="One tile per mailbox and check: green OK, red FAILING (result of the last background "
        "probe). Click a tile for the mailbox detail dashboard.",
        targets=[query("A", SUCCESS, "{{mailbox}} · {{check}}", instant=True)],
        links=[link("Runbooks", runbook("index"))],
    )

    lay.row("Why it is failing")
    lay.add(
        failure_table([("mailbox", "Mailbox"), ("check", "Check")], subject_link=mailbox_detail_link()),
        title="Failing mailbox checks and why",
        unit="bool",
        w=14,
        h=8,
        description="Each failing check with its reason code, what it means in plain words and the runbook "
        "that says what to do. Empty when everything passes.",
        targets=[
            query(
                "A",
                with_meaning(
                    f"max by (mailbox, check, reason) (m365_probe_failure_info{sel('mailbox', 'check')} == 1)"
                ),
                instant=True,
                table_format=True,
            )
        ],
        links=[link("Token runbook", runbook("token")), link("Mail runbook", runbook("mail"))],
    )
    lay.add(
        failure_table([("host", "Host"), ("port", "Port")]),
        title="Failing endpoints and why",
        unit="bool",
        w=10,
        h=8,
        description="Endpoints whose DNS, TCP or TLS check fails, with the reason in plain words. These "
        "usually explain the mailbox failures next to it.",
        targets=[
            query(
                "A",
                with_meaning(f"max by (host, port, reason) (m365_endpoint_failure_info{sel()} == 1)"),
                instant=True,
                table_format=True,
            )
        ],
        links=[link("Network runbook", runbook("network"))],
    )

    lay.row("Nearest expiries")
    cred_link = link(
        "Credentials & certificates",
        "/d/m365-credentials?${datasource:queryparam}&${job:queryparam}&${instance:queryparam}",
    )
    cred_link.target_blank(False)
    lay.add(
        time_left_bargauge(TOKEN_STEPS, 5400),
        title="Access tokens: time left",
        unit="dtdurations",
        w=8,
        h=8,
        description="Time until the current access token of each credential expires. The exporter renews "
        "tokens before expiry, so a low or negative value means renewal is failing.",
        targets=[
            query(
                "A",
                f"min by (credential) (m365_token_expiry_timestamp_seconds{sel()}) - time()",
                "{{credential}}",
                instant=True,
            )
        ],
        links=[cred_link, link("Token runbook", runbook("token"))],
    )
    lay.add(
        time_left_bargauge(EXPIRY_STEPS, 180 * DAY),
        title="Client secrets: time left (5 soonest)",
        unit="dtdurations",
        w=8,
        h=8,
        description="Time until the app registrations' client secrets/certificates expire (Microsoft Graph "
        "or declared in config). Orange under 30 days, red under 7: rotate the secret.",
        targets=[
            query(
                "A",
                "bottomk(5, min by (credential, key_id) "
                f"(m365_client_secret_expiry_timestamp_seconds{sel()}) - time())",
                "{{credential}} ({{key_id}})",
                instant=True,
            )
        ],
        links=[cred_link, link("Token runbook", runbook("token"))],
    )
    lay.add(
        time_left_bargauge(EXPIRY_STEPS, 90 * DAY),
        title="TLS certificates: time left (5 soonest)",
        unit="dtdurations",
        w=8,
        h=8,
        description="Time until the earliest-expiring certificate in the chain each endpoint sends. A short "
        "value usually means a TLS-intercepting proxy with its own certificate.",
        targets=[
            query(
                "A",
                f"bottomk(5, min by (host, port) (m365_tls_cert_expiry_timestamp_seconds{sel()}) - time())",
                "{{host}}:{{port}}",
                instant=True,
            )
        ],
        links=[cred_link, link("Network runbook", runbook("network"))],
    )

    lay.row("Endpoint reachability")
    reach = (
        table.Panel()
        .with_transformation(transformation("merge", {}))
        .with_transformation(
            organize(["host", "port", "Value #A", "Value #B", "Value #C", "Value #D"], exclude=("Time",))
        )
        .mappings(status_mappings())
        .thresholds(steps([(None, "red"), (1, "green")]))
        .override_by_name("host", [prop("displayName", "Host")])
        .override_by_name("port", [prop("displayName", "Port")])
    )
    for ref, name in (
        ("A", "DNS"),
        ("B", "TCP connect"),
        ("C", "TLS handshake"),
        ("D", "Certificate verified"),
    ):
        reach = reach.override_by_name(f"Value #{ref}", [prop("displayName", name), cell("color-background")])
    lay.add(
        reach,
        title="Endpoint reachability (DNS / TCP / TLS)",
        unit="bool",
        w=24,
        h=7,
        description="Per endpoint this host probes: DNS resolution, TCP connect, verified TLS handshake and "
        "certificate verification. A red cell points at the network path, not at Microsoft 365.",
        targets=[
            query(
                "A",
                "min by (host, port) ((0 * m365_tcp_connect_success" + sel() + ") "
                "+ on (job, instance, host) group_left () m365_dns_lookup_success" + sel() + ")",
                instant=True,
                table_format=True,
            ),
            query(
                "B", f"min by (host, port) (m365_tcp_connect_success{sel()})", instant=True, table_format=True
            ),
            query(
                "C",
                f"min by (host, port) (m365_tls_handshake_success{sel()})",
                instant=True,
                table_format=True,
            ),
            query(
                "D", f"min by (host, port) (m365_tls_cert_verified{sel()})", instant=True, table_format=True
            ),
        ],
        links=[link("Network runbook", runbook("network"))],
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
        title="Mailbox check history",
        unit="bool",
        w=24,
        h=9,
        description="Pass/fail of every mailbox check over the selected time range: spot flapping and when "
        "a failure started.",
        targets=[query("A", SUCCESS, "{{mailbox}} · {{check}}")],
    )
    return lay.dashboard
