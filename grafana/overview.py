"""NOC overview: mailbox x check status grid, why checks fail (plain words), expiries, reachability."""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import dashboard as db

from grafana.common import (
    DAY,
    EXPIRY_STEPS,
    FAIL_STEPS,
    PASS_STEPS,
    TOKEN_STEPS,
    Viz,
    cell,
    check_variable,
    failure_table,
    job_instance_variables,
    link,
    mailbox_detail_link,
    mailbox_variable,
    merged_table,
    new_dashboard,
    number_stat,
    query,
    runbook,
    runbook_link,
    sel,
    status_mappings,
    status_stat,
    status_timeline,
    steps,
    table_query,
    time_left_bargauge,
    with_meaning,
)

UID = "m365-overview"

SUCCESS = f"min by (mailbox, check) (m365_probe_success{sel('mailbox', 'check')})"


def expiry_gauge(
    spec: Sequence[tuple[float | None, str]],
    max_seconds: float,
    expr: str,
    legend: str,
    links: Sequence[db.DashboardLink],
) -> Viz:
    """Bar gauge of `expr` (an expiry timestamp minus time()) per series, coloured by `spec`."""
    return Viz(time_left_bargauge(spec, max_seconds), "dtdurations", [query("A", expr, legend, instant=True)], links)


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
        number_stat(FAIL_STEPS),
        title="Failing checks",
        unit="short",
        w=4,
        h=5,
        description="Mailbox checks (token, imap, pop3, smtp) whose last probe failed. 0 is good.",
        targets=[query("A", f"count({SUCCESS} == 0) or vector(0)", instant=True)],
    )
    lay.add(
        number_stat(FAIL_STEPS),
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
        links=[runbook_link("network")],
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
            table_query(
                "A",
                with_meaning(
                    f"max by (mailbox, check, reason) (m365_probe_failure_info{sel('mailbox', 'check')} == 1)"
                ),
            )
        ],
        links=[runbook_link("token"), runbook_link("mail")],
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
            table_query("A", with_meaning(f"max by (host, port, reason) (m365_endpoint_failure_info{sel()} == 1)"))
        ],
        links=[runbook_link("network")],
    )

    lay.row("Nearest expiries")
    cred_link = link(
        "Credentials & certificates",
        "/d/m365-credentials?${datasource:queryparam}&${job:queryparam}&${instance:queryparam}",
    )
    cred_link.target_blank(False)
    lay.place(
        expiry_gauge(
            TOKEN_STEPS,
            5400,
            f"min by (credential) (m365_token_expiry_timestamp_seconds{sel()}) - time()",
            "{{credential}}",
            [cred_link, runbook_link("token")],
        ),
        title="Access tokens: time left",
        w=8,
        h=8,
        description="Time until the current access token of each credential expires. The exporter renews "
        "tokens before expiry, so a low or negative value means renewal is failing.",
    )
    lay.place(
        expiry_gauge(
            EXPIRY_STEPS,
            180 * DAY,
            f"bottomk(5, min by (credential, key_id) (m365_client_secret_expiry_timestamp_seconds{sel()}) - time())",
            "{{credential}} ({{key_id}})",
            [cred_link, runbook_link("token")],
        ),
        title="Client secrets: time left (5 soonest)",
        w=8,
        h=8,
        description="Time until the app registrations' client secrets/certificates expire (Microsoft Graph "
        "or declared in config). Orange under 30 days, red under 7: rotate the secret.",
    )
    lay.place(
        expiry_gauge(
            EXPIRY_STEPS,
            90 * DAY,
            f"bottomk(5, min by (host, port) (m365_tls_cert_expiry_timestamp_seconds{sel()}) - time())",
            "{{host}}:{{port}}",
            [cred_link, runbook_link("network")],
        ),
        title="TLS certificates: time left (5 soonest)",
        w=8,
        h=8,
        description="Time until the earliest-expiring certificate in the chain each endpoint sends. A short "
        "value usually means a TLS-intercepting proxy with its own certificate.",
    )

    lay.row("Endpoint reachability")
    lay.add(
        merged_table(
            [("host", "Host"), ("port", "Port")],
            [
                ("A", "DNS", [cell("color-background")]),
                ("B", "TCP connect", [cell("color-background")]),
                ("C", "TLS handshake", [cell("color-background")]),
                ("D", "Certificate verified", [cell("color-background")]),
            ],
        )
        .mappings(status_mappings())
        .thresholds(steps(PASS_STEPS)),
        title="Endpoint reachability (DNS / TCP / TLS)",
        unit="bool",
        w=24,
        h=7,
        description="Per endpoint this host probes: DNS resolution, TCP connect, verified TLS handshake and "
        "certificate verification. A red cell points at the network path, not at Microsoft 365.",
        targets=[
            table_query(
                "A",
                "min by (host, port) ((0 * m365_tcp_connect_success" + sel() + ") "
                "+ on (job, instance, host) group_left () m365_dns_lookup_success" + sel() + ")",
            ),
            table_query("B", f"min by (host, port) (m365_tcp_connect_success{sel()})"),
            table_query("C", f"min by (host, port) (m365_tls_handshake_success{sel()})"),
            table_query("D", f"min by (host, port) (m365_tls_cert_verified{sel()})"),
        ],
        links=[runbook_link("network")],
    )

    lay.row("History")
    lay.add(
        status_timeline(),
        title="Mailbox check history",
        unit="bool",
        w=24,
        h=9,
        description="Pass/fail of every mailbox check over the selected time range: spot flapping and when "
        "a failure started.",
        targets=[query("A", SUCCESS, "{{mailbox}} · {{check}}")],
    )
    return lay.dashboard
