"""Credentials & certificates: client secret, access token and TLS certificate expiries, soonest first."""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.models import common as cm

from grafana.common import (
    EXPIRY_STEPS,
    TOKEN_STEPS,
    bottom_legend,
    cell,
    credential_variable,
    failure_table,
    job_instance_variables,
    link,
    new_dashboard,
    organize,
    prop,
    query,
    query_variable,
    runbook,
    sel,
    status_mappings,
    thresholds_json,
    transformation,
    with_meaning,
)
from grafana.mailbox import credential_info_table, scope_table

UID = "m365-credentials"

CRED = sel("credential")
HOST = sel("host")


def merged_table(
    keys: Sequence[tuple[str, str]], values: Sequence[tuple[str, str, list]], sort_by: str | None = None
) -> table.Panel:
    """Join instant table queries A, B, ... on their labels; `values` = (refId, column name, properties)."""
    order = [k for k, _ in keys] + [f"Value #{ref}" for ref, _, _ in values]
    p = (
        table.Panel()
        .with_transformation(transformation("merge", {}))
        .with_transformation(organize(order, exclude=("Time",)))
        .cell_height(cm.TableCellHeight.MD)
    )
    for key, name in keys:
        p = p.override_by_name(key, [prop("displayName", name)])
    for ref, name, props in values:
        p = p.override_by_name(f"Value #{ref}", [prop("displayName", name), *props])
    if sort_by:
        p = p.sort_by([cb.TableSortByFieldState().display_name(sort_by).desc(False)])
    return p


def time_left(spec: list[tuple[float | None, str]]) -> list:
    return [
        prop("unit", "dtdurations"),
        prop("decimals", 2),
        prop("thresholds", thresholds_json(spec)),
        cell("color-background"),
    ]


def expires_at() -> list:
    return [prop("unit", "dateTimeAsIso")]


def status(ok: str = "OK", bad: str = "FAILING") -> list:
    return [
        prop("unit", "bool"),
        prop("mappings", status_mappings(ok, bad)),
        prop("thresholds", thresholds_json([(None, "red"), (1, "green")])),
        cell("color-background"),
    ]


def build() -> db.Dashboard:
    lay = new_dashboard(
        UID,
        "M365 mail: credentials & certificates",
        "What expires and when: app registration client secrets/certificates, access tokens and the TLS "
        "certificates of the Microsoft 365 endpoints, soonest first; plus token permissions and refresh "
        "failures.",
        [
            *job_instance_variables(),
            credential_variable("Credential(s) from the exporter config"),
            query_variable(
                "host", "Host", f"label_values(m365_tcp_connect_success{sel()}, host)", "Endpoint host(s)"
            ),
        ],
    )

    secret = f"min by (credential, key_id) (m365_client_secret_expiry_timestamp_seconds{CRED})"
    lay.row("Client secrets and certificates of the app registrations")
    lay.add(
        merged_table(
            [("credential", "Credential"), ("key_id", "Key id")],
            [("A", "Time left", time_left(EXPIRY_STEPS)), ("B", "Expires", expires_at())],
            sort_by="Time left",
        ),
        title="Client secret / certificate expiry (soonest first)",
        unit="dtdurations",
        w=24,
        h=7,
        description="Each client secret or certificate credential of the app registrations (read from "
        "Microsoft Graph, or `secret_expiry` declared in config as key_id=declared). Orange "
        "under 30 days, red under 7: create a new secret, deploy it, then delete the old one.",
        targets=[
            query("A", f"{secret} - time()", instant=True, table_format=True),
            query("B", f"1000 * {secret}", instant=True, table_format=True),
        ],
        links=[link("Token runbook", runbook("token"))],
    )

    lay.row("Access tokens")
    by_cred = "min by (credential) "
    lay.add(
        merged_table(
            [("credential", "Credential")],
            [
                ("A", "Time left", time_left(TOKEN_STEPS)),
                ("B", "Since last refresh", [prop("unit", "dtdurations"), prop("decimals", 2)]),
                ("C", "Refresh", status()),
                ("D", "Identity", status("MATCHES", "WRONG IDENTITY")),
            ],
            sort_by="Time left",
        ),
        title="Access tokens (soonest expiry first)",
        unit="dtdurations",
        w=14,
        h=7,
        description="Per credential: time until the current access token expires, time since it was "
        "obtained, whether the last refresh succeeded and whether the token is for the "
        "configured identity.",
        targets=[
            query(
                "A",
                f"{by_cred}(m365_token_expiry_timestamp_seconds{CRED}) - time()",
                instant=True,
                table_format=True,
            ),
            query(
                "B",
                f"time() - max by (credential) (m365_token_last_refresh_timestamp_seconds{CRED})",
                instant=True,
                table_format=True,
            ),
            query("C", f"{by_cred}(m365_token_refresh_success{CRED})", instant=True, table_format=True),
            query("D", f"{by_cred}(m365_token_identity_match{CRED})", instant=True, table_format=True),
        ],
        links=[link("Token runbook", runbook("token"))],
    )
    lay.add(
        credential_info_table(),
        title="Credentials",
        unit="string",
        w=10,
        h=7,
        description="Tenant, application (client) id, OAuth2 flow and how each credential authenticates.",
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
        scope_table().sort_by([cb.TableSortByFieldState().display_name("State").desc(True)]),
        title="Permissions the checks need (missing first)",
        unit="bool",
        w=8,
        h=8,
        description="Each scope/role the mailbox checks of a credential need: granted, or MISSING from the "
        "token (add the API permission and grant admin consent; delegated: re-run `login`).",
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
        failure_table([("credential", "Credential")]),
        title="Token refresh failures now",
        unit="bool",
        w=8,
        h=8,
        description="Credentials whose token refresh fails, with the reason in plain words and the runbook.",
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
        timeseries.Panel().draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80).legend(bottom_legend()).min(0),
        title="Token refresh failures by reason",
        unit="short",
        w=8,
        h=8,
        description="Failed token refreshes per credential and reason in each interval.",
        targets=[
            query(
                "A",
                f"sum by (credential, reason) (increase(m365_token_refresh_failures_total{CRED}"
                "[$__rate_interval]))",
                "{{credential}}: {{reason}}",
            )
        ],
    )

    cert = f"min by (host, port) (m365_tls_cert_expiry_timestamp_seconds{HOST})"
    lay.row("TLS certificates of the endpoints")
    lay.add(
        merged_table(
            [("host", "Host"), ("port", "Port")],
            [
                ("A", "Time left", time_left(EXPIRY_STEPS)),
                ("B", "Expires", expires_at()),
                ("C", "Verified", status("VERIFIED", "NOT VERIFIED")),
            ],
            sort_by="Time left",
        ),
        title="TLS certificate expiry (soonest first)",
        unit="dtdurations",
        w=16,
        h=8,
        description="Earliest notAfter in the chain each endpoint sends (also when verification fails), and "
        "whether chain and host name verified. NOT VERIFIED or an unexpected expiry usually "
        "means a TLS-intercepting proxy.",
        targets=[
            query("A", f"{cert} - time()", instant=True, table_format=True),
            query("B", f"1000 * {cert}", instant=True, table_format=True),
            query(
                "C", f"min by (host, port) (m365_tls_cert_verified{HOST})", instant=True, table_format=True
            ),
        ],
        links=[link("Network runbook", runbook("network"))],
    )
    lay.add(
        table.Panel()
        .with_transformation(organize(["host", "port", "version"]))
        .override_by_name("host", [prop("displayName", "Host")])
        .override_by_name("port", [prop("displayName", "Port")])
        .override_by_name("version", [prop("displayName", "TLS version")]),
        title="Negotiated TLS version",
        unit="string",
        w=8,
        h=8,
        description="TLS version negotiated with each endpoint (TLS 1.2 or later is required).",
        targets=[
            query(
                "A",
                f"max by (host, port, version) (m365_tls_version_info{HOST} == 1)",
                instant=True,
                table_format=True,
            )
        ],
        links=[link("Network runbook", runbook("network"))],
    )
    return lay.dashboard
